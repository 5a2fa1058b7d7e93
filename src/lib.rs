//! Rolomesh: shared pieces of the `rolomesh` binary (demo topology builder used by the demo and the tests).

pub mod kubelab;
pub mod lab;
pub mod netns;
