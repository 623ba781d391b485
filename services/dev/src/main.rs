//! `agora-dev`: development credentials for running Agora on this machine.
//!
//! ```text
//! agora-dev init [--dir DIR]                 make or renew the CA, certificates, signing key, JWKS
//! agora-dev env SERVICE [--dir DIR]          the variables that run SERVICE with them (sh syntax)
//! agora-dev server NAME [--dir DIR]          a server certificate NAME.pem of the CA, for localhost
//! agora-dev token ROLE [SUBJECT] [--ttl S] [--dir DIR]
//!                                            a token: ROLE is staff, customer (SUBJECT = customer id)
//!                                            or service (SUBJECT = its name)
//! ```
//!
//! DIR defaults to `data/dev`. Arguments are read by hand: three commands
//! and two options do not need a parser crate.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use agora_dev::{
    layout::{Layout, services},
    tokens::Claims,
};

const USAGE: &str = "usage:
  agora-dev init [--dir DIR]
  agora-dev env SERVICE [--dir DIR]
  agora-dev server NAME [--dir DIR]
  agora-dev token staff|customer|service [SUBJECT] [--ttl SECONDS] [--dir DIR]";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("agora-dev: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Vec<String>) -> anyhow::Result<()> {
    let mut dir = "data/dev".to_owned();
    let mut ttl: i64 = 12 * 3600;
    let mut words = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dir" => dir = args.next().ok_or_else(|| anyhow::anyhow!("--dir needs a directory"))?,
            "--ttl" => {
                let value = args.next().ok_or_else(|| anyhow::anyhow!("--ttl needs a number of seconds"))?;
                ttl = value.parse().map_err(|_| anyhow::anyhow!("--ttl {value:?}: expected seconds"))?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            _ => words.push(arg),
        }
    }
    let layout = Layout::new(dir);
    match words.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["init"] => {
            layout.ensure()?;
            eprintln!("agora-dev: development CA, certificates and token keys in {}", layout.dir.display());
        }
        ["env", service] if services().iter().any(|s| s == service) => {
            for (name, value) in layout.env(service) {
                println!("export {name}='{value}'");
            }
        }
        ["server", name] => {
            layout.server(name)?;
            eprintln!(
                "agora-dev: {} and its key, from the CA {}",
                layout.cert(name).display(),
                layout.ca_cert().display()
            );
        }
        ["token", "staff"] => {
            println!("{}", layout.signer()?.sign(&Claims::new("dev-staff", &["staff"], ttl))?)
        }
        ["token", "staff", subject] => {
            println!("{}", layout.signer()?.sign(&Claims::new(subject, &["staff"], ttl))?)
        }
        ["token", "customer", subject] => {
            println!("{}", layout.signer()?.sign(&Claims::new(subject, &[], ttl))?)
        }
        ["token", "service", subject] => {
            println!("{}", layout.signer()?.sign(&Claims::new(subject, &["service"], ttl))?)
        }
        ["token", "customer"] => anyhow::bail!("a customer token needs the customer id as SUBJECT\n{USAGE}"),
        _ => anyhow::bail!("{USAGE}"),
    }
    Ok(())
}
