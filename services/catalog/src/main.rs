//! `agora-catalog`: the catalog service process.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    agora_platform::server::main_for(agora_catalog::SPEC, agora_catalog::build).await
}
