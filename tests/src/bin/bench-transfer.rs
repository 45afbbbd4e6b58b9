//! Payload transfer benchmark on loopback, run by `scripts/bench-transfer.sh`.
//!
//! Five node processes in one site. `BENCH_ROUNDS` rounds (default 3), each:
//! 1. patchmesh: node 0 imports a fresh payload of `BENCH_MIB` (default 1024) MiB; node 1
//!    fetches it from node 0 alone (time as the download measured it, every 16 KiB group
//!    verified and written to disk);
//! 2. baseline, at once after: a raw quinn connection between two processes, one stream
//!    carrying the same number of bytes from memory to memory (same QUIC library, same
//!    cipher suite, AES-128-GCM); once with the system's UDP socket buffers, once with the
//!    buffers the node asks for ([`patchmesh_node::net::UDP_BUFFER_BYTES`]), so the figure
//!    shows what the node's data path costs apart from socket tuning.
//!
//! Loopback throughput on a shared 2-core machine varies by a third from run to run, so the
//! rounds run side by side and the figures are the best of each (`ratio`) and the median of
//! the rounds' ratios (`ratio_median`). Then nodes 2 and 3 fetch the first payload too, and
//! node 4 fetches it from the four holders at once.
//!
//! Prints figures as it goes and, last, one JSON object: `{"payload_bytes":…,"rounds":…,
//! "patchmesh_mib_s":…,"quinn_mib_s":…,"ratio":…,"ratio_median":…,"quinn_same_buffers_mib_s":…,
//! "ratio_same_buffers":…,"ratio_same_buffers_median":…,"multi_source_mib_s":…}`.

use patchmesh_node::control::ContentView;
use patchmesh_tests::{wait_for, Mesh};
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

/// A UDP socket on loopback, with `buffers` bytes of socket buffer each way if given (as the
/// node asks for its own: [`patchmesh_node::net::UDP_BUFFER_BYTES`]).
fn udp_socket(buffers: Option<usize>) -> anyhow::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    if let Some(b) = buffers {
        let s = socket2::SockRef::from(&socket);
        s.set_recv_buffer_size(b)?;
        s.set_send_buffer_size(b)?;
    }
    Ok(socket)
}

/// The baseline's server process: serves `bytes` on the first stream, then exits.
async fn quinn_server(bytes: u64, buffers: Option<usize>) -> anyhow::Result<()> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let config = quinn::ServerConfig::with_single_cert(vec![cert.cert.der().clone()], key)?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        udp_socket(buffers)?,
        Arc::new(quinn::TokioRuntime),
    )?;
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
async fn quinn_client(
    addr: std::net::SocketAddr,
    bytes: u64,
    buffers: Option<usize>,
) -> anyhow::Result<f64> {
    // The suite the nodes negotiate (vendor/libp2p-tls prefers it), so both sides encrypt alike.
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites =
        vec![rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256];
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth();
    let config =
        quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls)?));
    let mut endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        udp_socket(buffers)?,
        Arc::new(quinn::TokioRuntime),
    )?;
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

/// One baseline run: a server process and this process as the client; `buffers` as in
/// [`udp_socket`] on both sides.
fn quinn_baseline(bytes: u64, buffers: Option<usize>) -> anyhow::Result<f64> {
    let me = std::env::current_exe()?;
    let mut server = std::process::Command::new(me)
        .args(["quinn-server", &bytes.to_string(), &buffers.unwrap_or(0).to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.as_mut().expect("piped")),
        &mut line,
    )?;
    let addr: std::net::SocketAddr = line.trim().parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let ms = rt.block_on(quinn_client(addr, bytes, buffers))?;
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
        let buffers = args.get(3).and_then(|b| b.parse().ok()).filter(|&b: &usize| b > 0);
        return tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(quinn_server(bytes, buffers));
    }
    let mib: u64 = std::env::var("BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let bytes = mib * 1024 * 1024;

    let rounds: u64 =
        std::env::var("BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);

    let mut mesh = Mesh::new("bench-transfer", 5, 1);
    for i in 0..5 {
        mesh.node_config.insert(i, "prefetch = false\n".into());
    }
    mesh.start_all();
    let meshed = wait_for(Duration::from_secs(30), || {
        (0..5).all(|i| mesh.peers(i).iter().filter(|p| p.admitted).count() == 4).then_some(())
    });
    anyhow::ensure!(meshed.is_some(), "the five nodes never all connected");

    // Each round: node 1 fetches a fresh payload from node 0 alone, then the raw quinn
    // baseline moves as many bytes; the two run back to back so both see the same machine.
    // (patchmesh, raw quinn, raw quinn with the node's socket buffers), MiB/s.
    let mut samples: Vec<(f64, f64, f64)> = Vec::new();
    let buffers = patchmesh_node::net::UDP_BUFFER_BYTES;
    let mut first_content = String::new();
    for round in 0..rounds {
        let file = mesh.root.0.join(format!("payload-{round}.bin"));
        write_payload(&file, mib, round)?;
        let t = Instant::now();
        let content = mesh.publish_file(0, &format!("bench-payload-{round}"), &file);
        std::fs::remove_file(&file)?;
        eprintln!(
            "round {}: imported {mib} MiB at node 0 in {:.1} s (hash + outboard + copy)",
            round + 1,
            t.elapsed().as_secs_f64()
        );
        let one = fetch_ms(&mesh, 1, &content)?;
        let one_ms = (one.elapsed_ms as f64).max(1.0);
        let patchmesh = mib_s(bytes, one_ms);
        let quinn_ms = quinn_baseline(bytes, None)?;
        let quinn = mib_s(bytes, quinn_ms);
        let tuned_ms = quinn_baseline(bytes, Some(buffers))?;
        let tuned = mib_s(bytes, tuned_ms);
        eprintln!(
            "round {}: patchmesh 1 source {patchmesh:.1} MiB/s ({one_ms:.0} ms), raw quinn 1 stream {quinn:.1} MiB/s ({quinn_ms:.0} ms), ratio {:.3}; raw quinn with the node's {} MiB socket buffers {tuned:.1} MiB/s ({tuned_ms:.0} ms), ratio {:.3}",
            round + 1,
            patchmesh / quinn,
            buffers >> 20,
            patchmesh / tuned
        );
        samples.push((patchmesh, quinn, tuned));
        if round == 0 {
            first_content = content;
        }
    }
    for i in [2, 3] {
        fetch_ms(&mesh, i, &first_content)?;
    }
    let multi = fetch_ms(&mesh, 4, &first_content)?;
    let multi_ms = (multi.elapsed_ms as f64).max(1.0);
    let multi_rate = mib_s(bytes, multi_ms);
    eprintln!(
        "patchmesh 4 sources: {mib} MiB in {multi_ms:.0} ms = {multi_rate:.1} MiB/s ({} sources known)",
        multi.sources_known
    );
    drop(mesh);

    let best = |f: fn(&(f64, f64, f64)) -> f64| samples.iter().map(f).fold(0.0, f64::max);
    let (patchmesh, quinn, tuned) = (best(|s| s.0), best(|s| s.1), best(|s| s.2));
    let median = |f: fn(&(f64, f64, f64)) -> f64| {
        let mut r: Vec<f64> = samples.iter().map(f).collect();
        r.sort_by(|a, b| a.total_cmp(b));
        r[r.len() / 2]
    };
    let (ratio_median, tuned_median) = (median(|s| s.0 / s.1), median(|s| s.0 / s.2));
    eprintln!(
        "best of {rounds}: patchmesh {patchmesh:.1} MiB/s, raw quinn {quinn:.1} MiB/s; ratio of the bests {:.3}, median of the rounds' ratios {ratio_median:.3}",
        patchmesh / quinn
    );
    eprintln!(
        "against raw quinn with the node's socket buffers ({tuned:.1} MiB/s): ratio of the bests {:.3}, median {tuned_median:.3}",
        patchmesh / tuned
    );
    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "payload_bytes": bytes,
            "rounds": rounds,
            "patchmesh_mib_s": round1(patchmesh),
            "quinn_mib_s": round1(quinn),
            "ratio": r3(patchmesh / quinn),
            "ratio_median": r3(ratio_median),
            "quinn_same_buffers_mib_s": round1(tuned),
            "ratio_same_buffers": r3(patchmesh / tuned),
            "ratio_same_buffers_median": r3(tuned_median),
            "multi_source_mib_s": round1(multi_rate),
        })
    );
    Ok(())
}

/// Writes `mib` MiB of pseudo-random bytes (different for each `seed`).
fn write_payload(file: &std::path::Path, mib: u64, seed: u64) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(file)?);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
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
    f.flush()?;
    Ok(())
}
