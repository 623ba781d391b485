//! `agora-fault-proxy --listen 127.0.0.1:PORT --target 127.0.0.1:5432`: a
//! TCP proxy whose faults a test script switches by writing a line to its
//! standard input (`none`, `refuse` or `blackhole`), for suites that run
//! the services as processes (the chaos run). It prints `listening ADDR`
//! once it listens, `fault NAME` after each switch, and exits when its
//! input ends.

use std::net::SocketAddr;

use agora_testing::faults::{Fault, FaultProxy};
use tokio::io::AsyncBufReadExt as _;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut listen, mut target) = (None, None);
    while let Some(flag) = args.next() {
        let value = args.next().and_then(|v| v.parse::<SocketAddr>().ok());
        match flag.as_str() {
            "--listen" => listen = value,
            "--target" => target = value,
            _ => {}
        }
    }
    let (Some(listen), Some(target)) = (listen, target) else {
        eprintln!("usage: agora-fault-proxy --listen HOST:PORT --target HOST:PORT");
        return std::process::ExitCode::from(2);
    };
    let proxy = FaultProxy::start_on(listen, target).await;
    println!("listening {}", proxy.addr);
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match line.trim().parse::<Fault>() {
            Ok(fault) => {
                proxy.set(fault);
                println!("fault {}", line.trim());
            }
            Err(err) => eprintln!("agora-fault-proxy: {err}"),
        }
    }
    std::process::ExitCode::SUCCESS
}
