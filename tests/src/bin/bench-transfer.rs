//! Payload transfer benchmark on loopback, run by `scripts/bench-transfer.sh`.
//!
//! 1. patchmesh: five node processes in one site; node 0 imports a payload of `BENCH_MIB`
//!    (default 1024) MiB; node 1 fetches it from node 0 alone (time as the download measured
//!    it, every 16 KiB group verified and written to disk). Nodes 2 and 3 then fetch it too, and
//!    node 4 fetches it from the four holders at once.
//! 2. Baseline: a raw quinn connection between two processes, one stream carrying the same
//!    number of bytes from memory to memory (same QUIC library, same TLS crypto provider).
//!
//! Prints figures as it goes and, last, one JSON object:
//! `{"payload_bytes":…,"patchmesh_mib_s":…,"quinn_mib_s":…,"ratio":…,"multi_source_mib_s":…}`.

use patchmesh_tests::{wait_for, Mesh};
use patchmesh_node::control::ContentView;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHUNK: usize = 1 << 20;

fn mib_s(bytes: u64, ms: f64) -> f64 {
    (bytes as f64 / (1024.0 * 1024.0)) / (ms / 1000.0)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[derive(Debug)]
struct AnyCert;

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The baseline's server process: serves `bytes` on the first stream, then exits.
async fn quinn_server(bytes: u64) -> anyhow::Result<()> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let config = quinn::ServerConfig::with_single_cert(vec![cert.cert.der().clone()], key)?;
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse()?)?;
    println!("{}", endpoint.local_addr()?);
    std::io::stdout().flush()?;
    let conn = endpoint.accept().await.ok_or_else(|| anyhow::anyhow!("no connection"))?.await?;
    let (mut send, mut recv) = conn.accept_bi().await?;
    let mut go = [0u8; 1];
    recv.read_exact(&mut go).await?;
    let data: Vec<u8> = (0..CHUNK).map(|i| (i * 131 % 251) as u8).collect();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        send.write_all(&data[..n]).await?;
        left -= n as u64;
    }
    send.finish()?;
    let _ = conn.closed().await;
    Ok(())
}

/// The baseline's client: returns milliseconds to receive `bytes` on one stream.
async fn quinn_client(addr: std::net::SocketAddr, bytes: u64) -> anyhow::Result<f64> {
    let tls = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth();
    let config =
        quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls)?));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(config);
    let conn = endpoint.connect(addr, "localhost")?.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let start = Instant::now();
    send.write_all(&[1]).await?;
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    while let Some(n) = recv.read(&mut buf).await? {
        got += n as u64;
    }
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(got == bytes, "received {got} of {bytes}");
    conn.close(0u32.into(), b"done");
    Ok(ms)
}

fn quinn_baseline(bytes: u64) -> anyhow::Result<f64> {
    let me = std::env::current_exe()?;
    let mut server = std::process::Command::new(me)
        .args(["quinn-server", &bytes.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.as_mut().expect("piped")),
        &mut line,
    )?;
    let addr: std::net::SocketAddr = line.trim().parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let ms = rt.block_on(quinn_client(addr, bytes))?;
    let _ = server.wait();
    Ok(ms)
}

fn fetch_ms(mesh: &Mesh, i: usize, content: &str) -> anyhow::Result<ContentView> {
    let out = mesh.cli_at(i, &["fetch", content, "--json", "--timeout-s", "1800"]);
    anyhow::ensure!(
        out.status.success(),
        "fetch at node {i}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn main() -> anyhow::Result<()> {
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("crypto provider"))?;
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("quinn-server") {
        let bytes: u64 = args[2].parse()?;
        return tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(quinn_server(bytes));
    }
    let mib: u64 = std::env::var("BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let bytes = mib * 1024 * 1024;

    let mut mesh = Mesh::new("bench-transfer", 5, 1);
    for i in 0..5 {
        mesh.node_config.insert(i, "prefetch = false\n".into());
    }
    mesh.start_all();
    let meshed = wait_for(Duration::from_secs(30), || {
        (0..5)
            .all(|i| mesh.peers(i).iter().filter(|p| p.admitted).count() == 4)
            .then_some(())
    });
    anyhow::ensure!(meshed.is_some(), "the five nodes never all connected");
    let file = mesh.root.0.join("payload.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file)?);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut buf = vec![0u8; CHUNK];
        for _ in 0..mib {
            for b in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
            }
            f.write_all(&buf)?;
        }
    }
    let t = Instant::now();
    let content = mesh.publish_file(0, "bench-payload", &file);
    eprintln!(
        "imported {mib} MiB at node 0 in {:.1} s (hash + outboard + copy)",
        t.elapsed().as_secs_f64()
    );

    let one = fetch_ms(&mesh, 1, &content)?;
    let one_ms = (one.elapsed_ms as f64).max(1.0);
    let patchmesh = mib_s(bytes, one_ms);
    eprintln!("patchmesh 1 source:  {mib} MiB in {one_ms:.0} ms = {patchmesh:.1} MiB/s");
    for i in [2, 3] {
        fetch_ms(&mesh, i, &content)?;
    }
    let multi = fetch_ms(&mesh, 4, &content)?;
    let multi_ms = (multi.elapsed_ms as f64).max(1.0);
    let multi_rate = mib_s(bytes, multi_ms);
    eprintln!(
        "patchmesh 4 sources: {mib} MiB in {multi_ms:.0} ms = {multi_rate:.1} MiB/s ({} sources known)",
        multi.sources_known
    );
    drop(mesh);

    let quinn_ms = quinn_baseline(bytes)?;
    let quinn = mib_s(bytes, quinn_ms);
    eprintln!("raw quinn 1 stream:  {mib} MiB in {quinn_ms:.0} ms = {quinn:.1} MiB/s");
    println!(
        "{}",
        serde_json::json!({
            "payload_bytes": bytes,
            "patchmesh_mib_s": round1(patchmesh),
            "quinn_mib_s": round1(quinn),
            "ratio": (patchmesh / quinn * 1000.0).round() / 1000.0,
            "multi_source_mib_s": round1(multi_rate),
        })
    );
    Ok(())
}
