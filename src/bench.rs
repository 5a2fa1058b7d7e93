//! `rolomesh bench`: measurements that need a real mesh on this machine (root). Each benchmark lives in
//! its own module of the library; this only lists them.

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Agent memory (RSS) with N linked peers (one real, the rest simulated), idle, linked and after traffic
    AgentRss(rolomesh::bench_rss::Args),
    /// The operator (members for N Nodes) and N agents' status writers against a local kube-apiserver
    K8sScale(rolomesh::bench_k8s::Args),
    /// A rolodex process with N simulated members on 127.0.0.1: CPU and bytes per heartbeat, join latency
    Rolodex(rolomesh::bench_rolodex::Args),
}

pub fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::AgentRss(a) => rolomesh::bench_rss::run(a),
        BenchCmd::K8sScale(a) => rolomesh::bench_k8s::main(a),
        BenchCmd::Rolodex(a) => rolomesh::bench_rolodex::run(a),
    }
}
