"""Reading files: YAML with source positions → plain data → models. The only I/O on the core path."""
