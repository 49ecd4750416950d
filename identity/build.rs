//! Compiles the gRPC protocol definitions with `protox` (a pure-Rust protobuf compiler), so building
//! Warden needs only cargo: no `protoc` on the machine.

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    let protos = ["proto/ca.proto", "proto/config.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
