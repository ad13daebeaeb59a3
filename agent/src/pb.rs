//! Generated code of the agent's own protos: mc-proxy's admin API and gRPC
//! health checking.

/// `mc_proxy.v1`.
pub mod mc_proxy {
    tonic::include_proto!("mc_proxy.v1");
}
/// `grpc.health.v1`.
pub mod health {
    tonic::include_proto!("grpc.health.v1");
}
