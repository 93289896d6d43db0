"""Pure network policy: Kubernetes and Cilium policies as one rule form, and a verdict for a flow.

- `model`: the normalized rule form (the "IR") that both the evaluator and the lab's
  nftables compiler consume: policies with a subject selector, per-direction default
  deny, and rules made of peer terms, port matchers and HTTP rules, with every
  implicit default of Kubernetes and Cilium (namespace, local cluster) already applied;
- `parse`: raw `NetworkPolicy` / `CiliumNetworkPolicy` / `CiliumClusterwideNetworkPolicy`
  specs → IR, with every problem at its field path (for `crossmesh validate`);
- `endpoints`: pods and nodes of a plan as endpoints with Cilium identity labels;
- `evaluator`: an index of which policies select which identities, and `evaluate()`.

No I/O here: the command line reads the mesh and prints the verdict.
"""
