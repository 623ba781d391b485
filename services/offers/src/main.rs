//! `agora-offers`: the offers service process.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    agora_platform::server::main_for(agora_offers::SPEC, agora_offers::build).await
}
