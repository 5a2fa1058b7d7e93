use super::*;

fn check_file(rel: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = crds_yaml().expect("CRDs encode");
    assert!(
        on_disk == generated,
        "{} is out of date with crds/src: regenerate with `cargo run -q -- crdgen > {rel}` (from crds/) \
         or `./crds/generate.sh`",
        path.display()
    );
}

#[test]
fn generated_yaml_matches_the_types() {
    check_file("rolomesh.yaml");
    check_file("../charts/rolomesh/crds/rolomesh.yaml");
}

#[test]
fn schema_carries_validation_rules_and_printer_columns() {
    let y = crds_yaml().unwrap();
    for needle in [
        "x-kubernetes-validations",
        "set exactly one of rolodex.managed and rolodex.external",
        "isCIDR",
        "LoadBalancer",
        "additionalPrinterColumns",
        "subresources",
        "rolomesh.io",
        "v1alpha1",
    ] {
        assert!(y.contains(needle), "CRD YAML lacks {needle}");
    }
}

#[test]
fn defaults_fill_in_a_minimal_network() {
    let n: MeshNetworkSpec = serde_json::from_value(serde_json::json!({
        "overlay": {"cidrs": ["100.64.0.0/10"]},
        "rolodex": {"managed": {}}
    }))
    .unwrap();
    assert_eq!(n.agent.keepalive, "25s");
    assert_eq!(n.agent.listen_port, 51820);
    assert!(n.agent.advertise_pod_cidrs);
    let m = n.rolodex.managed.unwrap();
    assert_eq!((m.service_type, m.port), (ServiceType::LoadBalancer, 6264));
}
