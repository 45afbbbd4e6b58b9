//! Human and JSON output of the read commands.

use serde_json::Value;

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// `patchmesh status`.
pub fn status(v: &Value, json: bool) {
    if json {
        outln!("{v}");
        return;
    }
    outln!("node      {}", s(&v["node"]));
    outln!("site      {}", s(&v["site"]));
    outln!("mesh      {} ({})", s(&v["mesh"]), s(&v["mesh_id"]));
    outln!("trust     admin set version {}", v["trust_version"]);
    outln!("catalog   {} changes, state {}", v["catalog_changes"], short(&v["catalog_state"]));
    outln!("state     {}", short(&v["state_hash"]));
    outln!("site      {} records, {} site summaries", v["site_records"], v["site_summaries"]);
    outln!("peers     {} connected, {} admitted", v["peers_connected"], v["peers_admitted"]);
    outln!("traffic   {} B sent, {} B received", v["bytes_sent"], v["bytes_received"]);
    outln!("uptime    {} s", v["uptime_ms"].as_u64().unwrap_or(0) / 1000);
    if let Some(rejected) = v["rejected"].as_object().filter(|m| !m.is_empty()) {
        let parts: Vec<String> = rejected.iter().map(|(k, n)| format!("{k}={n}")).collect();
        outln!("refused   {}", parts.join(" "));
    }
    if let Some(addrs) = v["listen"].as_array() {
        for a in addrs {
            outln!("listen    {}", s(a));
        }
    }
}

fn short(v: &Value) -> String {
    s(v).chars().take(16).collect()
}

/// `patchmesh peers`.
pub fn peers(v: &Value, json: bool) {
    if json {
        outln!("{v}");
        return;
    }
    let list = v.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        outln!("no peers connected");
        return;
    }
    outln!("{:<54} {:<10} {:<16} {:>9}", "PEER", "ADMITTED", "SITE", "PENALTIES");
    for p in list {
        outln!(
            "{:<54} {:<10} {:<16} {:>9}",
            s(&p["peer_id"]),
            if p["admitted"].as_bool() == Some(true) { "yes" } else { "no" },
            p["site"].as_str().unwrap_or("-"),
            p["penalties"]
        );
    }
}

/// `patchmesh inventory`.
pub fn inventory(v: &Value, json: bool) {
    if json {
        outln!("{v}");
        return;
    }
    let inv = &v["inventory"];
    outln!("node      {}", s(&v["node"]));
    outln!("host      {}", s(&inv["hostname"]));
    outln!("os        {}", s(&inv["os"]));
    outln!("kernel    {} ({})", s(&inv["kernel"]), s(&inv["arch"]));
    outln!("cpus      {}", inv["cpus"]);
    outln!("memory    {} MiB", inv["memory_bytes"].as_u64().unwrap_or(0) / (1024 * 1024));
    let verified = v["verified_against_signed_record"].as_bool() == Some(true);
    let pkgs = inv["packages"].as_array().cloned().unwrap_or_default();
    outln!(
        "packages  {}{}",
        pkgs.len(),
        if verified {
            " (matches the signed record)"
        } else {
            " (no signed record held here to check against)"
        }
    );
    for p in pkgs {
        outln!(
            "  {:<40} {:<32} {:<8} {}",
            s(&p["name"]),
            s(&p["version"]),
            s(&p["arch"]),
            s(&p["status"])
        );
    }
}

/// `patchmesh catalog show`.
pub fn catalog(v: &Value, json: bool) {
    if json {
        outln!("{v}");
        return;
    }
    outln!("catalog state {} ({} signed changes)", s(&v["catalog_state"]), v["changes"]);
    let entries = v["entries"].as_array().cloned().unwrap_or_default();
    if entries.is_empty() {
        outln!("(empty)");
    }
    for e in entries {
        let d = &e["entry"];
        match s(&d["kind"]) {
            "patch" => outln!(
                "patch    {} {}  {} bytes  executor={}  id={}",
                s(&d["name"]),
                s(&d["version"]),
                d["size_bytes"],
                s(&d["executor"]),
                s(&d["content_id"])
            ),
            "rollout" => outln!("rollout  {}  patch={}", s(&d["id"]), s(&d["content_id"])),
            _ => outln!("command  {} on rollout {}", s(&d["action"]), s(&d["rollout"])),
        }
    }
}
