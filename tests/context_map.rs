//! The context map is code: `proto/context_map.json` declares which context
//! is upstream of which, through which ids, calls and feeds; these tests
//! derive the real dependencies from the protos and the service crates and
//! fail wherever the two differ. The README's diagram is generated from the
//! same file, and a stale diagram fails too (`make context-map` rewrites it).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use serde_json::Value;

/// Every file the checks read, by path relative to the repository root, so
/// that tests can also check a changed copy of the code.
struct Workspace {
    files: BTreeMap<String, String>,
}

impl Workspace {
    fn load() -> Self {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut files = BTreeMap::new();
        for dir in ["proto", "services"] {
            collect(&root, &root.join(dir), &mut files);
        }
        for doc in GENERATED_IN {
            files.insert(doc.into(), std::fs::read_to_string(root.join(doc)).unwrap());
        }
        Self { files }
    }

    fn map(&self) -> Value {
        serde_json::from_str(&self.files["proto/context_map.json"])
            .expect("proto/context_map.json is valid JSON")
    }

    fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a String)> + 'a {
        self.files.iter().filter(move |(path, _)| path.starts_with(prefix))
    }
}

fn collect(root: &Path, dir: &Path, files: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(root, &path, files);
        } else if path.extension().is_some_and(|e| e == "proto" || e == "rs" || e == "json" || e == "toml") {
            let relative = path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
            files.insert(relative, std::fs::read_to_string(&path).unwrap());
        }
    }
}

fn snake_case(rpc: &str) -> String {
    let mut out = String::new();
    for (i, c) in rpc.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The RPC names of a context's services.
fn rpcs(ws: &Workspace, context: &str) -> Vec<String> {
    ws.under(&format!("proto/agora/{context}/v1/"))
        .flat_map(|(_, text)| {
            text.lines()
                .filter_map(|l| l.trim().strip_prefix("rpc "))
                .map(|l| l.split('(').next().unwrap().trim().to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The platform's upstream helpers (`services/platform/src/upstream/hosts.rs`)
/// a downstream may call instead of an RPC: the call as it reads in a
/// downstream (`.catalog.sale(`, `hosts.follow(`), and the snake-case names
/// of the RPCs the helper's body calls.
fn host_helpers(ws: &Workspace) -> Vec<(String, BTreeSet<String>)> {
    let all_rpcs: BTreeSet<String> = ws.map()["contexts"]
        .as_object()
        .unwrap()
        .keys()
        .flat_map(|c| rpcs(ws, c))
        .map(|r| snake_case(&r))
        .collect();
    let Some(text) = ws.files.get("services/platform/src/upstream/hosts.rs") else { return Vec::new() };
    let mut helpers: Vec<(String, &str, BTreeSet<String>)> = Vec::new();
    for block in text.split("\nimpl ").skip(1) {
        let receiver = match block.split(" {").next().unwrap_or("") {
            "Catalog" => ".catalog.",
            "Customers" => ".customers.",
            "Hosts" => "hosts.",
            _ => continue,
        };
        for function in block.split(" fn ").skip(1) {
            let name: String = function.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            let called: BTreeSet<String> =
                all_rpcs.iter().filter(|r| function.contains(&format!(".{r}("))).cloned().collect();
            helpers.push((format!("{receiver}{name}("), function, called));
        }
    }
    // A helper that calls another (`hosts.follow(` calls `.catalog.follow(`)
    // calls what that one calls.
    loop {
        let mut grew = false;
        for i in 0..helpers.len() {
            let inherited: BTreeSet<String> = helpers
                .iter()
                .filter(|(call, _, _)| helpers[i].1.contains(call.as_str()))
                .flat_map(|(_, _, rpcs)| rpcs.iter().cloned())
                .collect();
            let before = helpers[i].2.len();
            helpers[i].2.extend(inherited);
            grew |= helpers[i].2.len() > before;
        }
        if !grew {
            break;
        }
    }
    helpers.into_iter().filter(|(_, _, rpcs)| !rpcs.is_empty()).map(|(call, _, rpcs)| (call, rpcs)).collect()
}

/// Every difference between the declared map and the code.
fn check(ws: &Workspace, map: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let contexts: BTreeMap<String, Value> =
        map["contexts"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let shared: Vec<String> =
        map["shared_packages"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    let relations = map["relations"].as_array().unwrap();

    // The declared contexts are exactly the proto packages (shared ones aside).
    let mut packages = BTreeSet::new();
    for (path, text) in ws.under("proto/agora/") {
        if let Some(package) = text.lines().find_map(|l| l.strip_prefix("package ")) {
            let package = package.trim_end_matches(';').to_owned();
            if !shared.contains(&package) {
                packages.insert(package.clone());
            }
            let context = path.split('/').nth(2).unwrap();
            // Imports: only the own package, a shared one, or well-known types.
            for import in text.lines().filter_map(|l| l.strip_prefix("import \"")) {
                let import = import.trim_end_matches("\";");
                let Some(rest) = import.strip_prefix("agora/") else { continue };
                let other = rest.split('/').next().unwrap();
                let other_package = format!("agora.{other}.v1");
                if other != context && !shared.contains(&other_package) {
                    problems
                        .push(format!("{path} imports {import}: contexts refer to each other by id only"));
                }
            }
        }
    }
    let declared: BTreeSet<String> =
        contexts.values().map(|c| c["package"].as_str().unwrap().to_owned()).collect();
    for missing in packages.difference(&declared) {
        problems.push(format!("package {missing} is not in the context map"));
    }
    for missing in declared.difference(&packages) {
        problems.push(format!("the context map names {missing}, which has no proto package"));
    }

    for (context, info) in &contexts {
        let krate = info["crate"].as_str().unwrap();
        let upstreams: BTreeMap<&str, &Value> = relations
            .iter()
            .filter(|r| r["downstream"] == context.as_str())
            .map(|r| (r["upstream"].as_str().unwrap(), r))
            .collect();

        // A service crate depends on no other service crate.
        if let Some(manifest) = ws.files.get(&format!("{krate}/Cargo.toml")) {
            let dependencies =
                manifest.split("[dependencies]").nth(1).unwrap_or("").split("\n[").next().unwrap();
            for other in contexts.keys().filter(|o| *o != context) {
                if dependencies.lines().any(|l| l.starts_with(&format!("agora-{other} "))) {
                    problems
                        .push(format!("{krate} depends on the {other} crate; contexts talk over gRPC only"));
                }
            }
        } else {
            problems.push(format!("{krate}/Cargo.toml is missing"));
        }

        // Which other contexts the code refers to, where, and what it calls:
        // itself, or through the platform's helpers.
        let helpers = host_helpers(ws);
        let mut used_calls: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for (path, text) in ws.under(&format!("{krate}/src/")) {
            let through_helpers: BTreeSet<&String> = helpers
                .iter()
                .filter(|(call, _)| text.contains(call.as_str()))
                .flat_map(|(_, rpcs)| rpcs)
                .collect();
            for other in contexts.keys().filter(|o| *o != context) {
                for rpc in rpcs(ws, other) {
                    if through_helpers.contains(&snake_case(&rpc)) {
                        used_calls.entry(other.as_str()).or_default().insert(rpc);
                    }
                }
                // `agora::catalog::v1`, or `catalog::v1` inside `agora::{…}`.
                if !text.contains(&format!("{other}::v1")) {
                    continue;
                }
                if !upstreams.contains_key(other.as_str()) {
                    problems.push(format!(
                        "{path} uses the {other} contract, but {context} has no relation to {other}"
                    ));
                }
                if !path.starts_with(&format!("{krate}/src/upstream/")) {
                    problems.push(format!(
                        "{path} uses the {other} contract outside the anti-corruption layer ({krate}/src/upstream/)"
                    ));
                }
                for rpc in rpcs(ws, other) {
                    if text.contains(&format!(".{}(", snake_case(&rpc))) {
                        used_calls.entry(other.as_str()).or_default().insert(rpc);
                    }
                }
            }
        }
        for (upstream, relation) in &upstreams {
            let mut declared_calls: BTreeSet<String> = relation["calls"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().to_owned())
                .collect();
            if let Some(feed) = relation["feed"].as_str() {
                declared_calls.insert(feed.to_owned());
            }
            let used = used_calls.remove(upstream).unwrap_or_default();
            for call in used.difference(&declared_calls) {
                problems.push(format!(
                    "{context} calls {upstream}'s {call}, which the context map does not declare"
                ));
            }
            for call in declared_calls.difference(&used) {
                problems.push(format!(
                    "the context map says {context} uses {upstream}'s {call}, but no code does"
                ));
            }
        }
        for (upstream, calls) in used_calls {
            problems.push(format!(
                "{context} calls {upstream} ({calls:?}) without a relation in the context map"
            ));
        }
    }

    // Each context's default ports are its own, and its SPEC says them.
    let mut taken = BTreeMap::new();
    for (context, info) in &contexts {
        let (grpc, admin) = (info["grpc_port"].as_u64(), info["admin_port"].as_u64());
        let (Some(grpc), Some(admin)) = (grpc, admin) else {
            problems.push(format!("the context map gives {context} no grpc_port and admin_port"));
            continue;
        };
        for port in [grpc, admin] {
            if let Some(other) = taken.insert(port, context) {
                problems.push(format!("{context} and {other} both default to port {port}"));
            }
        }
        let spec = format!("ServiceSpec {{ name: \"{context}\", grpc_port: {grpc}, admin_port: {admin} }}");
        let lib = format!("{}/src/lib.rs", info["crate"].as_str().unwrap());
        if !ws.files.get(&lib).is_some_and(|text| text.contains(&spec)) {
            problems.push(format!("{lib} does not declare {spec}, as the context map does"));
        }
    }

    // The docs show the map as declared.
    for section in generated(ws, map) {
        match section.current(ws) {
            Some(current) if current == section.text => {}
            Some(_) => problems
                .push(format!("{} is stale in {}: run `make context-map`", section.what, section.file)),
            None => problems.push(format!("{} has no {} between its markers", section.file, section.what)),
        }
    }
    problems
}

/// The files with sections written from the map.
const GENERATED_IN: [&str; 2] = ["README.md", "docs/CONFIGURATION.md"];

/// A part of a document written from the map, between two markers.
struct Section {
    file: &'static str,
    what: &'static str,
    begin: String,
    end: String,
    text: String,
}

impl Section {
    fn new(file: &'static str, what: &'static str, marker: &str, text: String) -> Self {
        Self {
            file,
            what,
            begin: format!(
                "<!-- {marker}:begin (generated from proto/context_map.json by `make context-map`) -->\n"
            ),
            end: format!("<!-- {marker}:end -->"),
            text,
        }
    }

    fn span(&self, doc: &str) -> Option<(usize, usize)> {
        let start = doc.find(&self.begin)? + self.begin.len();
        Some((start, start + doc[start..].find(&self.end)?))
    }

    fn current<'a>(&self, ws: &'a Workspace) -> Option<&'a str> {
        let doc = &ws.files[self.file];
        self.span(doc).map(|(start, end)| &doc[start..end])
    }
}

/// Every section the map writes: the README's table of contexts and its
/// diagram, and the ports in docs/CONFIGURATION.md.
fn generated(ws: &Workspace, map: &Value) -> Vec<Section> {
    vec![
        Section::new("README.md", "the table of contexts", "contexts", contexts_table(ws, map)),
        Section::new("README.md", "the context map diagram", "context-map", mermaid(map)),
        Section::new("docs/CONFIGURATION.md", "the table of ports", "ports", ports_table(map)),
    ]
}

/// A Markdown table, its columns padded to their widest cell.
fn table(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap()).collect();
    let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    let pad = |row: &Vec<String>| row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
    let mut out = line(pad(&rows[0]));
    out.push_str(&line(widths.iter().map(|w| "-".repeat(*w)).collect()));
    for row in &rows[1..] {
        out.push_str(&line(pad(row)));
    }
    out
}

/// The README's table: each context, its package, its gRPC service, what it owns.
fn contexts_table(ws: &Workspace, map: &Value) -> String {
    let mut rows = vec![["context", "package", "service", "owns"].map(String::from).to_vec()];
    for (name, info) in map["contexts"].as_object().unwrap() {
        let service = ws
            .under(&format!("proto/agora/{name}/v1/"))
            .find_map(|(_, text)| text.lines().find_map(|l| l.strip_prefix("service ")))
            .map(|s| s.trim_end_matches(" {").to_owned())
            .unwrap_or_default();
        rows.push(vec![
            name.clone(),
            format!("`{}`", info["package"].as_str().unwrap()),
            format!("`{service}`"),
            info["owns"].as_str().unwrap_or("").to_owned(),
        ]);
    }
    table(&rows)
}

/// docs/CONFIGURATION.md's table of the services' default ports.
fn ports_table(map: &Value) -> String {
    let mut rows = vec![
        ["service", "gRPC (TLS)", "admin HTTP (`/metrics`, plaintext gRPC health)"]
            .map(String::from)
            .to_vec(),
    ];
    for (name, info) in map["contexts"].as_object().unwrap() {
        rows.push(vec![name.clone(), info["grpc_port"].to_string(), info["admin_port"].to_string()]);
    }
    table(&rows)
}

/// The diagram of the declared map, in Mermaid.
fn mermaid(map: &Value) -> String {
    let mut out = String::from("```mermaid\nflowchart LR\n");
    for (name, info) in map["contexts"].as_object().unwrap() {
        out.push_str(&format!(
            "  {name}[\"{name}<br/>{}<br/><i>{}</i>\"]\n",
            info["package"].as_str().unwrap(),
            info["role"].as_str().unwrap()
        ));
    }
    for r in map["relations"].as_array().unwrap() {
        let ids: Vec<&str> = r["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let mut via: Vec<&str> = r["calls"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        via.extend(r["feed"].as_str());
        out.push_str(&format!(
            "  {} -- \"{} · {}\" --> {}\n",
            r["upstream"].as_str().unwrap(),
            ids.join(", "),
            via.join(", "),
            r["downstream"].as_str().unwrap()
        ));
    }
    out.push_str("```\n");
    out
}

#[test]
fn the_code_follows_the_declared_context_map() {
    let ws = Workspace::load();
    if std::env::var("AGORA_WRITE_DIAGRAM").is_ok_and(|v| v == "1") {
        let mut docs = ws.files.clone();
        for section in generated(&ws, &ws.map()) {
            let doc = docs.get_mut(section.file).unwrap();
            let Some((start, end)) = section.span(doc) else {
                panic!("add the {} markers to {} first: {}", section.what, section.file, section.begin.trim())
            };
            doc.replace_range(start..end, &section.text);
        }
        for file in GENERATED_IN {
            std::fs::write(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(file), &docs[file]).unwrap();
        }
        return;
    }
    let problems = check(&ws, &ws.map());
    assert!(problems.is_empty(), "the code and proto/context_map.json differ:\n  {}", problems.join("\n  "));
}

/// The checks catch each kind of drift; a check that never fails proves nothing.
#[test]
fn drift_from_the_map_is_caught() {
    let ws = Workspace::load();
    let has = |problems: &[String], needle: &str| problems.iter().any(|p| p.contains(needle));

    // A relation the code has but the map lost.
    let mut map = ws.map();
    map["relations"]
        .as_array_mut()
        .unwrap()
        .retain(|r| !(r["downstream"] == "offers" && r["upstream"] == "catalog"));
    let problems = check(&ws, &map);
    assert!(has(&problems, "offers has no relation to catalog"), "{problems:?}");
    assert!(has(&problems, "stale"), "the diagram follows the map: {problems:?}");

    // A call the map does not allow, and a declared feed nobody follows.
    let mut map = ws.map();
    let offers_catalog = map["relations"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|r| r["downstream"] == "offers" && r["upstream"] == "catalog")
        .unwrap();
    offers_catalog["calls"] = serde_json::json!([]);
    offers_catalog["feed"] = serde_json::json!("StreamProducts");
    let problems = check(&ws, &map);
    assert!(has(&problems, "calls catalog's GetProduct"), "{problems:?}");
    assert!(has(&problems, "uses catalog's StreamProducts, but no code does"), "{problems:?}");

    // A port the map moved: the service's SPEC and the docs disagree.
    let mut map = ws.map();
    map["contexts"]["offers"]["grpc_port"] = serde_json::json!(50063);
    let problems = check(&ws, &map);
    assert!(has(&problems, "services/offers/src/lib.rs does not declare"), "{problems:?}");
    assert!(has(&problems, "the table of ports is stale in docs/CONFIGURATION.md"), "{problems:?}");
    map["contexts"]["offers"]["grpc_port"] = serde_json::json!(50051);
    assert!(has(&check(&ws, &map), "both default to port 50051"), "ports are the context's own");

    // A new cross-context import, a downstream domain holding another
    // context's message, and a service depending on another service's crate.
    let mut changed = Workspace { files: ws.files.clone() };
    let offers_proto = changed.files.get_mut("proto/agora/offers/v1/offers_service.proto").unwrap();
    *offers_proto = offers_proto.replacen(
        "import \"google/protobuf/timestamp.proto\";",
        "import \"agora/catalog/v1/catalog_service.proto\";\nimport \"google/protobuf/timestamp.proto\";",
        1,
    );
    changed.files.insert(
        "services/offers/src/domain/leak.rs".into(),
        "pub struct Leak(pub agora_contracts::agora::catalog::v1::Product);".into(),
    );
    let manifest = changed.files.get_mut("services/offers/Cargo.toml").unwrap();
    *manifest = manifest.replacen(
        "[dependencies]\n",
        "[dependencies]\nagora-catalog = { path = \"../catalog\" }\n",
        1,
    );
    let problems = check(&changed, &changed.map());
    assert!(has(&problems, "offers_service.proto imports agora/catalog"), "{problems:?}");
    assert!(
        has(&problems, "domain/leak.rs uses the catalog contract outside the anti-corruption layer"),
        "{problems:?}"
    );
    assert!(has(&problems, "services/offers depends on the catalog crate"), "{problems:?}");
}
