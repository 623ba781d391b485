//! `agora-customers`: the customers service process.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    agora_platform::server::main_for(agora_customers::SPEC, agora_customers::build).await
}
