"""Pure service logic: which backends serve a Service from a given cluster, in preference tiers."""
