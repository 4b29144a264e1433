//! Generates the gRPC code for the kubelet's device plugin and PodResources APIs. The protos
//! are parsed by `protox` (pure Rust), so no `protoc` has to be installed on the build host or
//! in the image's build stage.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/deviceplugin_v1beta1.proto",
        "proto/podresources_v1.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
