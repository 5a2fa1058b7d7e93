//! Rolomesh: shared pieces of the `rolomesh` binary (demo topology builder used by the demo and the tests).

pub mod bench_k8s;
pub mod bench_rolodex;
pub mod bench_rss;
pub mod kubelab;
pub mod lab;
pub mod netns;
pub mod peersim;
