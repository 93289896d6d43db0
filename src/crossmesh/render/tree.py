"""The whole rendered tree for a plan.

clusters/<cluster>/cilium-values.yaml   (cni: cilium)
clusters/<cluster>/clustermesh-secrets.yaml  (two Cilium clusters or more) the clustermesh-apiserver's certificates,
                                        signed by the mesh CA; apply before `helm install` (0600)
clusters/<cluster>/manifests.yaml       the cluster's objects as they would be applied (with spec.istio: without
                                        its Istio policies, which istio/policies.yaml holds)
clusters/<cluster>/mcs.yaml             ServiceExport/ServiceImport of its global Services
clusters/<cluster>/k3s-server.yaml      distribution k3s: every server's shared config.yaml.d file
clusters/<cluster>/kubeadm-config.yaml  distribution kubeadm: ClusterConfiguration for `kubeadm init`
clusters/<cluster>/pin-pod-cidrs.sh     the mesh file states node podCIDRs: sets each Node's (once, from
                                        empty) while kube-controller-manager's allocator is off
clusters/<cluster>/crossmesh-agent.yaml nodes that run an agent: the agents' DaemonSets (hostNetwork, NET_ADMIN;
                                        the only way on Talos) with their Namespace and ServiceAccount —
                                        crossmesh-agent on tunnel nodes, crossmesh-agent-routes on route-only
                                        ones (topology gateways: no tunnel, routes via the site's gateway)
clusters/<cluster>/istio/               spec.istio: an Istio multi-primary install on one network (render/istio.py;
                                        docs/istio.md installs it): istiod-values.yaml (Helm, istio/istiod) and
                                        istio-operator.yaml (the same for istioctl), cacerts.yaml (the plug-in CA:
                                        mesh root + the cluster's intermediate and its key, 0600), remote-secrets.yaml
                                        and create-remote-secrets.sh (one per other cluster), policies.yaml (the
                                        cluster's PeerAuthentication/AuthorizationPolicy), east-west/ (gateway values
                                        and the 15443 Gateway: only for a cluster put on a network of its own)
clusters/<cluster>/gateway/             Gateway API objects in the manifests (render/gateway.py; docs/ingress.md deploys
                                        them): tls-secrets.yaml (listeners' certificates from the mesh's ingress CA,
                                        0600), gateways.yaml (the Gateways in Istio's terms, with their Deployment
                                        overrides and cloud load balancer annotations), httproutes.yaml
nodes/<node>/talos.yaml                 distribution talos: machine-config patch + WireguardConfig with its
                                        routes (0600) — everything a Talos node gets
nodes/<node>/talos-agent.yaml           distribution talos, tunnel nodes with the agents' DaemonSet instead: the
                                        same machine-config patch without the WireguardConfig (the agent owns the link)
nodes/<node>/wg-crossmesh.conf          other distributions: wg-quick file (0600: the node's private key)
nodes/<node>/routes.sh                  other distributions: routes beyond wg-quick and the CNI (other
                                        clusters in the site, gateways topology), IP forwarding on gateways
nodes/<node>/k3s-config.yaml            distribution k3s: the node's config.yaml (node-ip, node-name)
nodes/<node>/flannel-net-conf.json      distribution k3s, Flannel across a hub: Flannel's net-conf with the
                                        planned MTU (its `flannel-conf`, /etc/rancher/k3s/flannel-net-conf.json)
nodes/<node>/kubelet.env                distribution kubeadm: KUBELET_EXTRA_ARGS (node-ip)
nodes/<node>/crossmesh-agent.service    other distributions, nodes that run an agent: its systemd unit (after
                                        wg-quick on tunnel nodes)
etcd/rbac.sh                            etcd roles: each node's agent writes only its own record
observability/grafana-dashboard.json    the mesh's Grafana dashboard: control plane, Hubble flows and drops, services,
                                        a row per site with its tunnels (render/grafana.py)
observability/prometheus.yml            Prometheus scrape jobs: every agent (:9962) and every node's Hubble (:9965)
sites/<site>/prerequisites.tf.json      cloud sites: what the cloud must allow and carry (inbound rules, routes,
                                        forwarding checks) as a Terraform/OpenTofu root module (render/providers.py)
hubs/<hub>/                             spec.hubs: one Terraform/OpenTofu root module per transit gateway
                                        (docs/hybrid.md deploys it): transit.tf.json (render/transit.py: the
                                        transit gateway, its VPC attachment, route tables, customer gateways, VPN
                                        connections with their tunnel options, the VPC's routes to it),
                                        customer-gateways.tf.json (render/customer_gateway.py: the customer
                                        gateways' files, which Terraform fills with AWS's tunnel addresses;
                                        OpenStack security-group rules for IKE, NAT-T and ESP from them),
                                        templates/<site>/ (those files as templates: charon-<k>/strongswan.conf
                                        and swanctl.conf per tunnel, bird/bird.conf, port-map.nft),
                                        psk.auto.tfvars.json (the tunnels' pre-shared keys, 0600)

Managed distributions (eks, aks, gke) get no distribution file: their control plane is the cloud's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from crossmesh.identity.ingress import ListenerId
from crossmesh.model.k8s import Manifest
from crossmesh.model.plan import Plan
from crossmesh.model.tls import ClusterMeshTLS, IngressCert, IstioCA, clustermesh_clusters
from crossmesh.plan import ingress, prerequisites, vpngw
from crossmesh.render import (
    agent_deploy,
    cilium,
    customer_gateway,
    etcd,
    gateway,
    grafana,
    istio,
    k3s,
    kubeadm,
    mcs,
    podcidrs,
    providers,
    routes,
    talos,
    transit,
    wireguard,
)
from crossmesh.render.files import RenderedFile, yaml_dump

KIND_ORDER = {
    "Namespace": 0,
    "ServiceAccount": 1,
    "ConfigMap": 2,
    "Secret": 2,
    "Service": 3,
    "Deployment": 4,
    "StatefulSet": 4,
    "Pod": 5,
}


def render(
    plan: Plan,
    manifests: dict[str, list[Manifest]],
    private_key: Callable[[str], str],
    clustermesh: Mapping[str, ClusterMeshTLS],
    istio_cas: Mapping[str, IstioCA] | None = None,
    ingress_certs: Mapping[ListenerId, IngressCert] | None = None,
    psks: Mapping[vpngw.TunnelKey, str] | None = None,
) -> dict[str, RenderedFile]:
    """`clustermesh`: the TLS material of every Cluster Mesh member (`Compiled.clustermesh_tls`);
    `istio_cas`: with `spec.istio`, every cluster's Istio CA (the mesh root and its intermediate);
    `ingress_certs`: the certificate of every gateway listener whose TLS is `mesh` (`Compiled.ingress_certs`);
    `psks`: with `spec.vpnConnections`, every tunnel's pre-shared key (`Compiled.tunnel_psks`)."""
    out: dict[str, RenderedFile] = {}
    cache: dict[int, str] = {}
    agent_names: set[str] = set()
    members = clustermesh_clusters(plan)
    for cluster in plan.clusters:
        base = f"clusters/{cluster.name}"
        mcs_objects = mcs.objects(plan, cluster)
        if cluster.cni == "cilium":
            values = cilium.values(plan, cluster, mcs_api=bool(mcs_objects))
            out[f"{base}/cilium-values.yaml"] = RenderedFile(yaml_dump(values))
        if cluster.name in members:
            tls = clustermesh.get(cluster.name)
            if tls is None:
                raise ValueError(f"cluster {cluster.name}: no ClusterMesh certificates were given to render")
            secrets = cilium.clustermesh_secrets(tls)
            out[f"{base}/clustermesh-secrets.yaml"] = RenderedFile(yaml_dump(*secrets), 0o600, True)
        objects = sorted(
            # With spec.istio the Istio policies go to istio/policies.yaml (after istio/base's CRDs), not here;
            # Gateways and HTTPRoutes to gateway/ (after the Gateway API CRDs, translated for Istio).
            [
                m
                for m in manifests.get(cluster.name, [])
                if (plan.istio is None or not istio.is_policy(m))
                and not gateway.is_gateway_api(m)
                and not ingress.is_implied(m)
            ],
            key=lambda m: (KIND_ORDER.get(m.kind, 9), m.kind, m.namespace, m.name),
        )
        if objects:
            out[f"{base}/manifests.yaml"] = RenderedFile(yaml_dump(*[m.raw for m in objects]))
        if mcs_objects:
            out[f"{base}/mcs.yaml"] = RenderedFile(yaml_dump(*mcs_objects))
        if cluster.distribution == "k3s":
            out[f"{base}/k3s-server.yaml"] = RenderedFile(yaml_dump(k3s.server_config(plan, cluster)))
        elif cluster.distribution == "kubeadm":
            out[f"{base}/kubeadm-config.yaml"] = RenderedFile(yaml_dump(kubeadm.cluster_config(plan, cluster)))
        pin = podcidrs.script(plan, cluster)
        if pin is not None:
            out[f"{base}/pin-pod-cidrs.sh"] = RenderedFile(pin, 0o755)
        agents = agent_deploy.agent_nodes(plan, cluster)
        if agents:
            deploy = agent_deploy.daemonset_objects(plan, cluster, agents)
            out[f"{base}/crossmesh-agent.yaml"] = RenderedFile(yaml_dump(*deploy))
            agent_names.update(n.name for n in agents)
    clusters = {c.name: c for c in plan.clusters}  # Plan.cluster() is a linear scan; this runs per node
    for node in plan.nodes:
        base = f"nodes/{node.name}"
        cluster = clusters[node.cluster]
        key = private_key(node.name) if node.tunnel is not None else ""
        if cluster.distribution == "talos":
            # A Talos node runs no wg-quick and no script: its documents carry the link and its routes.
            patch = talos.machine_patch(plan, cluster, node)
            docs = [patch]
            wg_doc = talos.wireguard_document(node, key)
            if wg_doc is not None:
                docs.append(wg_doc)
            out[f"{base}/talos.yaml"] = RenderedFile(yaml_dump(*docs), 0o600, wg_doc is not None)
            if wg_doc is not None and node.name in agent_names:  # a route-only node keeps talos.yaml as it is
                out[f"{base}/talos-agent.yaml"] = RenderedFile(yaml_dump(patch))
            continue
        conf = wireguard.wg_quick(plan, node, key, cache)
        if conf is not None:
            out[f"{base}/{node.tunnel.interface if node.tunnel else 'wg'}.conf"] = RenderedFile(conf, 0o600, True)
        route_script = routes.script(plan, node)
        if route_script is not None:
            out[f"{base}/routes.sh"] = RenderedFile(route_script, 0o755)
        if cluster.distribution == "k3s":
            net_conf = k3s.flannel_net_conf(plan, cluster, node)
            if net_conf is not None:
                out[f"{base}/flannel-net-conf.json"] = RenderedFile(json.dumps(net_conf, indent=2) + "\n")
            out[f"{base}/k3s-config.yaml"] = RenderedFile(yaml_dump(k3s.node_config(node, flannel_conf=bool(net_conf))))
        elif cluster.distribution == "kubeadm":
            out[f"{base}/kubelet.env"] = RenderedFile(kubeadm.kubelet_env(plan, node))
        if node.name in agent_names:
            out[f"{base}/crossmesh-agent.service"] = RenderedFile(agent_deploy.systemd_unit(plan, node))
    out.update(istio.tree(plan, manifests, istio_cas or {}))
    out.update(gateway.tree(plan, manifests, ingress_certs or {}))
    rbac = etcd.rbac_script(plan)
    if rbac is not None:
        out["etcd/rbac.sh"] = RenderedFile(rbac, 0o755)
    out["observability/grafana-dashboard.json"] = RenderedFile(grafana.dashboard_json(plan))
    out["observability/prometheus.yml"] = RenderedFile(yaml_dump(grafana.scrape_config(plan)))
    for site in prerequisites.derive(plan):
        module = providers.render(site)
        if module is not None:
            out[f"sites/{site.site.name}/prerequisites.tf.json"] = RenderedFile(module)
    out.update(hubs(plan, psks or {}))
    return out


def hubs(plan: Plan, psks: Mapping[vpngw.TunnelKey, str]) -> dict[str, RenderedFile]:
    """Each hub's folder: one root module (its `*.tf.json` files, Terraform reads them together), the
    customer gateways' templates, and the keys as a 0600 variables file (render/transit.py says why)."""
    out: dict[str, RenderedFile] = {}
    missing = [k for k in vpngw.tunnel_keys(plan) if k not in psks]
    if missing:
        raise ValueError(f"no pre-shared key was given to render for tunnels {missing}")
    for hub in plan.hubs:
        base = f"hubs/{hub.name}"
        doc = transit.module(plan, hub)
        wanted = {"aws": transit.AWS_PROVIDER}
        gateways = customer_gateway.templates(plan, hub.name)
        if gateways:
            wanted["local"] = transit.LOCAL_PROVIDER
            if any(s.name in gateways and s.provider == "openstack" for s in plan.sites):
                wanted["openstack"] = providers.PROVIDERS["openstack"]
            cgw = customer_gateway.module(plan, hub.name, gateways)
            out[f"{base}/customer-gateways.tf.json"] = RenderedFile(transit.dumps(cgw))
            for site, files in gateways.items():
                for rel, f in files.items():
                    out[f"{base}/{customer_gateway.template_path(site, rel)}"] = RenderedFile(f.template)
        doc["terraform"] = transit.terraform_block(wanted)
        out[f"{base}/transit.tf.json"] = RenderedFile(transit.dumps(doc))
        keys = {
            transit.psk_variable(c.name, t.index): psks[c.name, t.index]
            for c in plan.vpn
            if c.hub == hub.name
            for t in c.tunnels
        }
        if keys:
            out[f"{base}/{transit.PSK_FILE}"] = RenderedFile(transit.dumps(keys), 0o600, True)
    return out
