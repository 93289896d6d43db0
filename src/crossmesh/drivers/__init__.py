"""The imperative shell: drivers that make a plan real (the lab today; etcd agents and Kubernetes later)."""
