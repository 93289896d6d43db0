"""Gateway API `Gateway` and `HTTPRoute` read, checked and evaluated as a conformant gateway does.

Pure: `parse` turns manifests into `model` values with positioned problems, `check` relates them
to the cluster's Services, Secrets and each other, and `match` answers which rule a gateway
applies to a request and which backend a weighted draw picks — for the lab's gateway, `trace`
and the `ingress/*` checks alike; `haproxy` renders that same decision as the configuration of the
HAProxy a lab gateway pod runs.
"""
