//! The CRDs against a real kube-apiserver: they install, and bad objects are refused with messages a person
//! understands. (Operator, chart and agents against the API: tests/k8s_mesh.rs.)

use std::path::Path;

use rolomesh::kubelab::ControlPlane;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn network(spec: &str) -> String {
    format!(
        "apiVersion: rolomesh.io/v1alpha1\nkind: MeshNetwork\nmetadata:\n  name: t\n  namespace: default\nspec:\n{spec}"
    )
}

const GOOD: &str = "  overlay:\n    cidrs: [100.64.0.0/10, fd52::/64]\n    allocateFrom: [100.64.0.0/16]\n  rolodex:\n    managed: {}\n";

#[test]
fn crds_install_and_bad_objects_are_refused_with_clear_messages() {
    let cp = ControlPlane::start(repo(), "crds").expect("control plane");
    cp.k(&["apply", "-f", "crds/rolomesh.yaml"]).expect("CRDs apply");
    cp.k(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/meshnetworks.rolomesh.io",
        "crd/meshmembers.rolomesh.io",
    ])
    .expect("CRDs established");

    let (ok, out) = cp.apply(&network(GOOD)).unwrap();
    assert!(ok, "a valid MeshNetwork was refused: {out}");
    let got = cp
        .k(&[
            "get",
            "meshnetwork",
            "t",
            "-o",
            "jsonpath={.spec.agent.keepalive} {.spec.rolodex.managed.port}",
        ])
        .unwrap();
    assert_eq!(got, "25s 6264", "defaults were not applied by the API server");

    let bad_networks = [
        (
            "  overlay:\n    cidrs: [100.64.0.0/10]\n  rolodex:\n    managed: {}\n    external: {endpoints: [a:1]}\n",
            "set exactly one of rolodex.managed and rolodex.external",
        ),
        (
            "  overlay:\n    cidrs: [100.64.0.0/10]\n  rolodex: {}\n",
            "set exactly one of rolodex.managed and rolodex.external",
        ),
        (
            "  overlay:\n    cidrs: [100.64.0.0/33]\n  rolodex:\n    managed: {}\n",
            "overlay.cidrs entries must be CIDRs",
        ),
        (
            "  overlay:\n    cidrs: [100.64.0.0/10, 10.0.0.0/8]\n  rolodex:\n    managed: {}\n",
            "at most one IPv4 and one IPv6",
        ),
        (
            "  overlay:\n    cidrs: [100.64.0.0/10]\n    allocateFrom: [10.0.0.0/16]\n  rolodex:\n    managed: {}\n",
            "inside one of overlay.cidrs",
        ),
        ("  overlay:\n    cidrs: []\n  rolodex:\n    managed: {}\n", "should have at least 1 items"),
        (
            "  overlay:\n    cidrs: [100.64.0.0/10]\n  rolodex:\n    managed: {serviceType: Foo}\n",
            "Unsupported value: \"Foo\"",
        ),
        (
            "  overlay:\n    cidrs: [100.64.0.0/10]\n  rolodex:\n    managed: {port: 70000}\n",
            "less than or equal to 65535",
        ),
        (
            "  overlay:\n    cidrs: [100.64.0.0/10]\n  rolodex:\n    external: {endpoints: [\"no port\"]}\n",
            "must be host:port",
        ),
        (
            "  networkName: Bad_Name\n  overlay:\n    cidrs: [100.64.0.0/10]\n  rolodex:\n    managed: {}\n",
            "networkName must be 1-63 characters",
        ),
        (
            "  overlay:\n    cidrs: [100.64.0.0/10]\n  rolodex:\n    managed: {}\n  agent: {keepalive: soon}\n",
            "agent.keepalive must be a duration",
        ),
        (
            "  overlay:\n    cidrs: [100.64.0.0/10]\n  rolodex:\n    managed: {}\n  agent: {mtu: 100}\n",
            "greater than or equal to 576",
        ),
    ];
    for (spec, want) in bad_networks {
        let (ok, out) = cp.apply(&network(spec)).unwrap();
        assert!(!ok, "accepted an invalid MeshNetwork:\n{spec}");
        assert!(out.contains(want), "for\n{spec}expected a message containing {want:?}, got:\n{out}");
    }

    let member = |spec: &str| {
        format!(
            "apiVersion: rolomesh.io/v1alpha1\nkind: MeshMember\nmetadata:\n  name: m\n  namespace: default\nspec:\n  networkRef: {{name: t}}\n{spec}"
        )
    };
    let (ok, out) =
        cp.apply(&member("  overlayAddresses: [100.64.0.9]\n  routes: [10.244.1.0/24]\n")).unwrap();
    assert!(ok, "a valid MeshMember was refused: {out}");
    for (spec, want) in [
        ("  overlayAddresses: [not-an-ip]\n", "overlayAddresses entries must be IP addresses"),
        ("  routes: [10.0.0.0/99]\n", "routes entries must be CIDRs"),
    ] {
        let (ok, out) = cp.apply(&member(spec)).unwrap();
        assert!(!ok && out.contains(want), "for\n{spec}expected {want:?}, got:\n{out}");
    }
    let (ok, out) = cp
        .apply("apiVersion: rolomesh.io/v1alpha1\nkind: MeshMember\nmetadata: {name: no-network, namespace: default}\nspec: {}\n")
        .unwrap();
    assert!(!ok && out.contains("networkRef: Required value"), "{out}");

    let table = cp.k(&["get", "meshmembers"]).unwrap();
    assert!(table.starts_with("NAME") && table.contains("NETWORK") && table.contains("ADDRESS"), "{table}");
}
