"""`make context NAME=<name> [UPSTREAMS=catalog,customers] [AGGREGATE=<name>]`:
a new bounded context, written from the house's own patterns and wired in
everywhere a context is listed, so that it builds, passes its tests, runs
beside the others (`make run`) and deploys with the generated manifests.

What it writes, from tools/context/templates (Jinja2):
- proto/agora/<name>/v1/<name>_service.proto: one aggregate with Create
  (request_id), Get, List (keyset pages), Update (update_mask, etag),
  Delete, and its change feed (Watch<Aggregate>Events);
- services/<name>/: domain/, store.rs, api.rs (with its policy table),
  lib.rs, main.rs, migrations for SQLite and PostgreSQL, and tests/it/
  (the API through real gRPC on both backends, bad input, the policy
  matrix, the feeds); with UPSTREAMS, upstream/: the anti-corruption layer
  that follows their feeds and applies them to its aggregate.

What it edits, each where the tree lists contexts:
- proto/context_map.json: the context (next free ports) and its relations;
- Cargo.toml: the workspace's members;
- src/lib.rs: the contracts crate's module and change-feed envelope;
- docs/SECURITY.md: the new policy table, and the upstreams' rows that now
  name the new service; docs/API.md: a section on its behaviour.

Then the generators that already exist write the rest: `make context-map`
(the README's table and diagram, the ports in docs/CONFIGURATION.md) and
tools/deploy_manifests.py (manifests, NetworkPolicies, dashboards and
alerts). `make run`, `make image` and the monitoring read the context map.

It refuses a name that is taken or is not a valid package name, and
upstreams other than the open host services the platform speaks (catalog,
customers), and writes nothing then."""

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import jinja2

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"

# The upstreams a generated context can follow: the open host services whose
# questions and feeds the platform's upstream core asks and reads
# (services/platform/src/upstream/hosts.rs), with the id a downstream keeps
# and the call it makes.
UPSTREAMS = {
    "catalog": {"id": "product_id", "call": "GetProduct", "feed": "WatchCatalogEvents"},
    "customers": {"id": "customer_id", "call": "GetCustomer", "feed": "WatchCustomerEvents"},
}
# Names a context cannot take: crates and packages of the tree, and words
# Rust or protobuf reserve.
RESERVED = {"common", "platform", "testing", "dev", "contracts", "bench", "agora", "proto", "src",
            "tests", "tools", "deploy", "docs", "clients", "type", "mod", "self", "super", "crate",
            "fn", "impl", "trait", "struct", "enum", "match", "loop", "move", "ref", "use", "pub",
            "static", "const", "async", "await", "dyn", "box", "yield", "macro", "where", "while",
            "for", "if", "else", "let", "mut", "return", "in", "as", "break", "continue", "extern",
            "true", "false", "unsafe", "package", "import", "option", "service", "message", "rpc",
            "returns", "stream", "syntax", "oneof", "map", "reserved", "optional", "repeated"}
NAME = re.compile(r"^[a-z][a-z0-9]{2,29}$")


class Refused(Exception):
    """What the user asked for cannot be made; nothing was written."""


def camel(snake: str) -> str:
    return "".join(part.capitalize() for part in snake.split("_"))


def plural(word: str) -> str:
    if re.search(r"[^aeiou]y$", word):
        return word[:-1] + "ies"
    if re.search(r"(s|x|z|ch|sh)$", word):
        return word + "es"
    return word + "s"


def singular(name: str) -> str:
    """The aggregate a context's name suggests: `reviews` → `review`."""
    if name.endswith("ies") and len(name) > 4:
        return name[:-3] + "y"
    if re.search(r"(ss|x|z|ch|sh)es$", name):
        return name[:-2]
    if name.endswith("s") and not re.search(r"(ss|us|is)$", name) and len(name) > 3:
        return name[:-1]
    return name


def variables(root: Path, name: str, upstreams: list, aggregate: str | None) -> dict:
    """Everything the templates and the edits need, after every check."""
    context_map = json.loads((root / "proto" / "context_map.json").read_text())
    contexts = context_map["contexts"]
    if not NAME.match(name):
        raise Refused(f"NAME={name!r}: a context's name is 3 to 30 lower-case letters and digits, "
                      "starting with a letter (it is the package agora.<name>.v1 and the crate agora-<name>)")
    if name in contexts:
        raise Refused(f"NAME={name}: the name is taken (proto/context_map.json)")
    if name in RESERVED:
        raise Refused(f"NAME={name}: the name is reserved (a crate or package of the tree, or a keyword)")
    for taken in (root / "services" / name, root / "proto" / "agora" / name):
        if taken.exists():
            raise Refused(f"NAME={name}: {taken.relative_to(root)} exists already")
    for upstream in upstreams:
        if upstream not in contexts:
            raise Refused(f"UPSTREAMS: {upstream} is no context of proto/context_map.json")
        if upstream not in UPSTREAMS:
            raise Refused(f"UPSTREAMS: {upstream} is not an open host service the platform follows "
                          f"(one of {', '.join(UPSTREAMS)}); its questions and feed would need a place in "
                          "services/platform/src/upstream/hosts.rs first")
    if len(set(upstreams)) != len(upstreams):
        raise Refused("UPSTREAMS names a context twice")
    agg = aggregate or singular(name)
    if not re.match(r"^[a-z][a-z0-9_]{1,29}$", agg) or agg in RESERVED:
        raise Refused(f"AGGREGATE={agg!r}: expected a lower-case name such as review or stock_item")
    aggs = plural(agg)
    if aggs == agg:
        raise Refused(f"AGGREGATE={agg}: its plural would be the same word; name the aggregate in the singular")
    grpc_port = max(c["grpc_port"] for c in contexts.values()) + 1
    admin_port = max(c["admin_port"] for c in contexts.values()) + 1
    upstreams = [u for u in UPSTREAMS if u in upstreams]  # the map's order
    catalog, customers = "catalog" in upstreams, "customers" in upstreams
    # id, title, notes, revision, update_time, create_time, and the ids and
    # state the upstreams add (store.rs's insert).
    insert_columns = 6 + 2 * catalog + customers
    return {
        "name": name,
        "Name": camel(name),
        "agg": agg,
        "Agg": camel(agg),
        "aggs": aggs,
        "Aggs": camel(aggs),
        "prefix": re.sub(r"[^a-z]", "", agg)[:3],
        "owns": aggs.replace("_", " "),
        "grpc_port": grpc_port,
        "admin_port": admin_port,
        "upstreams": upstreams,
        "catalog": catalog,
        "customers": customers,
        "both": catalog and customers,
        "upstream_ids": [UPSTREAMS[u]["id"] for u in upstreams],
        "upstream_vars": [f"AGORA_{u.upper()}_ADDRS" for u in upstreams],
        "upstream_ports": [contexts[u]["grpc_port"] for u in upstreams],
        "insert_placeholders": ", ".join(f"${i}" for i in range(1, insert_columns + 1)),
        "rpc_count": 6,
    }


def render(root: Path, v: dict) -> list:
    """Every template, rendered to its place in the tree: the paths written."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    written = []
    for template in sorted(TEMPLATES.rglob("*.j2")):
        relative = template.relative_to(TEMPLATES).as_posix()
        if relative.endswith("upstream/mod.rs.j2") and not v["upstreams"]:
            continue
        target = root / relative.removesuffix(".j2").format(name=v["name"])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(env.get_template(relative).render(**v))
        written.append(target)
    return written


def write_context_map(root: Path, v: dict) -> None:
    """The context and its relations, in the map's own layout (a line each)."""
    path = root / "proto" / "context_map.json"
    m = json.loads(path.read_text())
    m["contexts"][v["name"]] = {
        "package": f"agora.{v['name']}.v1", "crate": f"services/{v['name']}",
        "role": "downstream" if v["upstreams"] else "upstream (open host service)",
        "owns": v["owns"], "grpc_port": v["grpc_port"], "admin_port": v["admin_port"]}
    for upstream in v["upstreams"]:
        u = UPSTREAMS[upstream]
        m["relations"].append({"downstream": v["name"], "upstream": upstream, "ids": [u["id"]],
                               "calls": [u["call"]], "feed": u["feed"]})
    def line(entry: dict) -> str:
        fields = ", ".join(f"{json.dumps(k)}: {json.dumps(value, ensure_ascii=False)}" for k, value in entry.items())
        return "{ " + fields + " }"

    contexts = ",\n".join(f"    {json.dumps(k)}: {line(c)}" for k, c in m["contexts"].items())
    relations = ",\n".join(f"    {line(r)}" for r in m["relations"])
    path.write_text("{\n"
                    f"  \"about\": {json.dumps(m['about'], ensure_ascii=False)},\n"
                    f"  \"shared_packages\": {json.dumps(m['shared_packages'])},\n"
                    f"  \"contexts\": {{\n{contexts}\n  }},\n"
                    f"  \"relations\": [\n{relations}\n  ]\n"
                    "}\n")


def insert_after_last(text: str, pattern: str, addition: str, what: str) -> str:
    """`addition` right after the last match of `pattern`."""
    matches = list(re.finditer(pattern, text, re.M))
    if not matches:
        raise SystemExit(f"make context: {what} not found; the tree changed shape, add it by hand")
    end = matches[-1].end()
    return text[:end] + addition + text[end:]


def edit_workspace(root: Path, v: dict) -> None:
    path = root / "Cargo.toml"
    text = path.read_text()
    for key in ("members", "default-members"):
        line = re.search(rf"^{key} = \[(.*)\]$", text, re.M)
        if not line:
            raise SystemExit(f"make context: the workspace's {key} not found in Cargo.toml")
        items = [i.strip() for i in line.group(1).split(",")]
        last_service = max(i for i, item in enumerate(items) if item.startswith('"services/'))
        items.insert(last_service + 1, f'"services/{v["name"]}"')
        text = text[:line.start(1)] + ", ".join(items) + text[line.end(1):]
    path.write_text(text)


def edit_contracts(root: Path, v: dict) -> None:
    path = root / "src" / "lib.rs"
    text = path.read_text()
    n, agg, Agg = v["name"], v["agg"], v["Agg"]
    text = insert_after_last(
        text, r"^//! - \[`agora::\w+::v1`\]: .*$",
        f"\n//! - [`agora::{n}::v1`]: {v['owns']} ({'downstream' if v['upstreams'] else 'upstream'}).",
        "the contracts crate's list of packages")
    text = insert_after_last(
        text, r"^    pub mod \w+ \{\n        pub mod v1 \{\n            tonic::include_proto!\(\"agora\.\w+\.v1\"\);\n        \}\n    \}$",
        f"\n    pub mod {n} {{\n        pub mod v1 {{\n            tonic::include_proto!(\"agora.{n}.v1\");\n        }}\n    }}",
        "the contracts crate's module tree")
    text = insert_after_last(
        text, r"^    change_feed_message!\([^;]*?\);$",
        f"\n    use crate::agora::{n}::v1 as {n};\n    use {n}::{Agg}Event;\n"
        f"    change_feed_message!({n}::Watch{Agg}EventsResponse, {Agg}Event, {n}::{agg}_event::Kind);",
        "the change feeds' envelopes")
    path.write_text(text)


def edit_security(root: Path, v: dict) -> None:
    """The new policy's table, and each upstream's rows the map now grants
    to the new service too (as `matrix::doc_rows` writes them)."""
    path = root / "docs" / "SECURITY.md"
    text = path.read_text()
    for upstream in v["upstreams"]:
        u = UPSTREAMS[upstream]
        for rpc in (u["call"], u["feed"]):
            row = re.compile(rf"^\| {rpc} \| (.*?) \|(.*)$", re.M)
            found = row.search(text)
            if not found:
                raise SystemExit(f"make context: docs/SECURITY.md has no row of {rpc}")
            who = found.group(1) + (", " if found.group(1) else "") + f"service {v['name']}"
            text = text[:found.start()] + f"| {rpc} | {who} |{found.group(2)}" + text[found.end():]
    Agg, Aggs = v["Agg"], v["Aggs"]
    table = (f"**{v['name']}** (`agora.{v['name']}.v1.{Agg}Service`)\n\n"
             "| RPC | who | audited |\n| --- | --- | --- |\n"
             f"| Create{Agg} | staff | yes |\n| Get{Agg} | every customer, staff |  |\n"
             f"| List{Aggs} | every customer, staff |  |\n| Update{Agg} | staff | yes |\n"
             f"| Delete{Agg} | staff | yes |\n| Watch{Agg}Events |  |  |\n\n")
    at = text.index("## Codes")
    path.write_text(text[:at] + table + text[at:])


def edit_api_doc(root: Path, v: dict) -> None:
    path = root / "docs" / "API.md"
    text = path.read_text()
    n, agg, aggs = v["name"], v["agg"], v["aggs"]
    lines = [f"### The {n} context's behaviour, in short", "",
             f"- Generated by `make context`: {aggs} with a title (1 to 200 characters) and",
             "  notes (up to 2000). Ids are opaque strings chosen by the service",
             f"  (`{v['prefix']}_…`).",
             f"- `Create{v['Agg']}` is idempotent by `request_id`, as `CreateProduct` is.",
             f"- `Update{v['Agg']}` changes the fields of `update_mask` (title, notes);",
             "  an etag, when sent, must be the current one (FAILED_PRECONDITION).",
             f"- Staff write; every customer and staff member reads; `Watch{v['Agg']}Events` is",
             "  for the services the context map names."]
    if v["catalog"]:
        lines += [f"- A {agg} is about a product on sale (NOT_FOUND for an unknown product,",
                  "  FAILED_PRECONDITION for a discontinued one); when the catalog discontinues",
                  "  it, `product_on_sale` turns false."]
    if v["customers"]:
        lines += [f"- A {agg} belongs to a registered customer (NOT_FOUND otherwise); when",
                  f"  customers deletes the customer, their {aggs} are deleted."]
    at = text.index("### Errors")
    path.write_text(text[:at] + "\n".join(lines) + "\n\n" + text[at:])


def regenerate(root: Path, v: dict) -> None:
    """The outputs of the existing generators, and the new crate formatted."""
    steps = [
        ["cargo", "fmt", "-p", f"agora-{v['name']}", "-p", "agora-contracts"],
        ["make", "-s", "context-map"],
        [sys.executable, "tools/deploy_manifests.py"],
    ]
    for step in steps:
        print("make context:", " ".join(step), flush=True)
        subprocess.run(step, cwd=root, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--upstreams", default="", help="comma-separated: catalog, customers")
    parser.add_argument("--aggregate", default="", help="the aggregate's name (default: NAME in the singular)")
    parser.add_argument("--root", default=str(HERE.parents[1]), help="the tree to write into")
    parser.add_argument("--no-regenerate", action="store_true", help="skip fmt, context-map and manifests")
    args = parser.parse_args()
    root = Path(args.root).resolve()
    upstreams = [u.strip() for u in args.upstreams.split(",") if u.strip()]
    try:
        v = variables(root, args.name.strip(), upstreams, args.aggregate.strip() or None)
    except Refused as refused:
        print(f"make context: {refused}", file=sys.stderr)
        return 2
    written = render(root, v)
    write_context_map(root, v)
    edit_workspace(root, v)
    edit_contracts(root, v)
    edit_security(root, v)
    edit_api_doc(root, v)
    if not args.no_regenerate:
        regenerate(root, v)
    print(f"make context: {v['name']} (agora.{v['name']}.v1.{v['Agg']}Service) on ports "
          f"{v['grpc_port']} and {v['admin_port']}, {len(written)} files written"
          + (f", following {' and '.join(v['upstreams'])}" if v["upstreams"] else "") + ".")
    print("Next: the aggregate's fields and rules (services/%s/src/domain/mod.rs, then the proto, "
          "store.rs and a migration); CONTRIBUTING.md, Adding a context, says what else to edit." % v["name"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
