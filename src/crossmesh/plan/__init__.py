"""Pure planning: mesh model + allocations + public keys → the desired network (`model.plan.Plan`)."""
