"""The hostile-input suite (issue 18): a generated corpus of bad meshes run against every command."""
