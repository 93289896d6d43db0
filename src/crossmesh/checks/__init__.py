"""Connectivity and security checks as data, Cilium connectivity-test style: each check is
named, its expectation comes from the plan, its result is a named value."""
