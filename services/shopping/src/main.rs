//! `agora-shopping`: the shopping service process.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    agora_platform::server::main_for(agora_shopping::SPEC, agora_shopping::build).await
}
