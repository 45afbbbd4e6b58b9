//! Admin and root keys held by the admin: in a file encrypted with a passphrase (age, scrypt
//! recipient, ASCII armour; the default), in a plain hex file (only when asked), or in ssh-agent
//! (`agent:SHA256:…`), where the secret never reaches this process.
//!
//! Node keys stay plain (mode 0600): a node must start unattended after a reboot, and its key
//! can do no more than its admission certificate allows.

use anyhow::{bail, Context};
use clap::Subcommand;
use patchmesh_node::files;
use patchmesh_protocol::crypto::{
    encode, signed_message, Domain, Ed25519, Envelope, SecretKey, Sig, SignatureCheck,
    SignatureEntry,
};
use patchmesh_protocol::ids::KeyId;
use rand::rngs::OsRng;
use serde::Serialize;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// The first line of an encrypted key file (age's ASCII armour).
const ARMOR_BEGIN: &str = "-----BEGIN AGE ENCRYPTED FILE-----";
/// An encrypted key file is far smaller than this.
const KEY_FILE_BYTES_MAX: u64 = 4096;
/// The environment variable naming a file whose first line is the passphrase (for scripts).
pub const PASSPHRASE_ENV: &str = "PATCHMESH_PASSPHRASE_FILE";
/// Refuse to spend more than ~16 s of scrypt on a file someone else wrote (2^20 is ~1 s here;
/// age's own default target).
const MAX_WORK_FACTOR: u8 = 22;

/// `patchmesh key …`
#[derive(Subcommand)]
pub enum KeyCmd {
    /// Change the passphrase of a key file, encrypt a plain one, or (--unencrypted) decrypt.
    Passwd {
        /// The key file.
        file: PathBuf,
        /// Write the key back as plain hex (not recommended; for throwaway meshes).
        #[arg(long)]
        unencrypted: bool,
    },
    /// The public key of a key file or of an ssh-agent key (`agent:SHA256:…`).
    Show {
        /// The key file, or `agent:SHA256:…` for a key held by ssh-agent.
        key: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a key as an OpenSSH private key (mode 0600, unencrypted) for `ssh-add`; delete the
    /// file once the agent (or a hardware token) holds it.
    ExportSsh {
        /// The key file.
        file: PathBuf,
        /// Where to write the OpenSSH key.
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(cmd: KeyCmd) -> anyhow::Result<()> {
    match cmd {
        KeyCmd::Passwd { file, unencrypted } => {
            let key = read_secret(&file)?;
            let text = if unencrypted {
                warn_unencrypted(&file);
                format!("{}\n", hex::encode(key.seed()))
            } else {
                encrypt(&key, &new_passphrase(&format!("new passphrase for {}", file.display()))?)?
            };
            replace_private(&file, text.as_bytes())?;
            outln!(
                "{} rewritten ({})",
                file.display(),
                if unencrypted { "plain" } else { "encrypted" }
            );
            Ok(())
        }
        KeyCmd::Show { key, json } => {
            let k = AdminKey::load(&key)?;
            let v = patchmesh_node::control::KeyShowOutput {
                public_key: k.public().to_hex(),
                storage: match &k.holder {
                    Holder::Secret { encrypted: true, .. } => "encrypted file",
                    Holder::Secret { encrypted: false, .. } => "plain file",
                    Holder::Agent { .. } => "ssh-agent",
                }
                .into(),
                ssh_fingerprint: ssh_public(&k.public())?
                    .fingerprint(ssh_key::HashAlg::Sha256)
                    .to_string(),
            };
            if json {
                outln!("{}", crate::output::json(&v));
            } else {
                outln!("public key      {}", v.public_key);
                outln!("held in         {}", v.storage);
                outln!(
                    "ssh fingerprint {}  (--admin-key agent:{})",
                    v.ssh_fingerprint,
                    v.ssh_fingerprint
                );
            }
            Ok(())
        }
        KeyCmd::ExportSsh { file, out } => {
            let key = read_secret(&file)?;
            let pair = ssh_key::private::Ed25519Keypair::from_seed(&key.seed());
            let private = ssh_key::PrivateKey::new(
                ssh_key::private::KeypairData::Ed25519(pair),
                format!("patchmesh {}", &key.public().to_hex()[..16]),
            )
            .context("building the OpenSSH key")?;
            let text = private.to_openssh(ssh_key::LineEnding::LF).context("encoding the key")?;
            write_new_private(&out, text.as_bytes())?;
            outln!("OpenSSH key written to {} (mode 0600, unencrypted)", out.display());
            outln!(
                "next: ssh-add {}  then delete it; sign with --admin-key agent:{}",
                out.display(),
                private.public_key().fingerprint(ssh_key::HashAlg::Sha256)
            );
            Ok(())
        }
    }
}

/// A key that signs for an admin (or root): its secret in this process, or in ssh-agent.
pub struct AdminKey {
    public: KeyId,
    holder: Holder,
}

enum Holder {
    Secret { key: SecretKey, encrypted: bool },
    Agent { socket: PathBuf, key: ssh_key::PublicKey },
}

impl AdminKey {
    /// Loads `arg`: `agent:SHA256:…` (a key ssh-agent holds, found by its fingerprint), or a key
    /// file (encrypted: asks for the passphrase on the terminal or reads it from the file named
    /// by `PATCHMESH_PASSPHRASE_FILE`).
    pub fn load(arg: &Path) -> anyhow::Result<AdminKey> {
        let s = arg.to_string_lossy();
        if let Some(fp) = s.strip_prefix("agent:") {
            return agent_key(fp);
        }
        let bytes = files::read_limited(arg, KEY_FILE_BYTES_MAX)?;
        let encrypted = is_encrypted(&bytes);
        let key = if encrypted { decrypt(arg, &bytes)? } else { files::read_key(arg)? };
        Ok(AdminKey { public: key.public(), holder: Holder::Secret { key, encrypted } })
    }

    /// Loads the admin key given by the flag, `PATCHMESH_ADMIN_KEY` or the context.
    pub fn resolve(flag: Option<&Path>) -> anyhow::Result<AdminKey> {
        let path = crate::context::admin_key(flag)?;
        Self::load(&path).with_context(|| format!("loading the admin key {}", path.display()))
    }

    /// Loads several, with the file named in each error.
    pub fn load_all(args: &[PathBuf]) -> anyhow::Result<Vec<AdminKey>> {
        args.iter()
            .map(|p| Self::load(p).with_context(|| format!("loading {}", p.display())))
            .collect()
    }

    /// The public key.
    pub fn public(&self) -> KeyId {
        self.public
    }

    /// Signs `body` for `domain`. An agent's signature is checked here before it is used.
    pub fn sign(&self, domain: Domain, body: &[u8]) -> anyhow::Result<SignatureEntry> {
        match &self.holder {
            Holder::Secret { key, .. } => Ok(key.sign(domain, body)),
            Holder::Agent { socket, key } => {
                let mut client = ssh_agent_client_rs::Client::connect(socket)
                    .with_context(|| format!("connecting to ssh-agent at {}", socket.display()))?;
                let sig = client
                    .sign(key.clone(), &signed_message(domain, body))
                    .context("ssh-agent refused to sign (is the key still loaded? does it ask for confirmation?)")?;
                let raw: [u8; 64] = sig.as_bytes().try_into().map_err(|_| {
                    anyhow::anyhow!(
                        "ssh-agent returned a {}-byte signature, not ed25519",
                        sig.as_bytes().len()
                    )
                })?;
                let entry = SignatureEntry { key: self.public, signature: Sig(raw) };
                Ed25519
                    .check(domain, body, &entry)
                    .context("ssh-agent returned a signature that does not verify")?;
                Ok(entry)
            }
        }
    }

    /// Encodes `value` and signs it.
    pub fn seal<T: Serialize>(&self, domain: Domain, value: &T) -> anyhow::Result<Envelope> {
        let body = encode(value);
        let signatures = vec![self.sign(domain, &body)?];
        Ok(Envelope { domain, body, signatures })
    }

    /// Adds this key's signature to `env` (once).
    pub fn cosign(&self, env: &mut Envelope) -> anyhow::Result<()> {
        if !env.signatures.iter().any(|s| s.key == self.public) {
            let e = self.sign(env.domain, &env.body)?;
            env.signatures.push(e);
        }
        Ok(())
    }
}

fn agent_key(fingerprint: &str) -> anyhow::Result<AdminKey> {
    let socket = std::env::var_os("SSH_AUTH_SOCK").map(PathBuf::from).context(
        "SSH_AUTH_SOCK is not set: start ssh-agent (eval $(ssh-agent)) and ssh-add the key",
    )?;
    let mut client = ssh_agent_client_rs::Client::connect(&socket)
        .with_context(|| format!("connecting to ssh-agent at {}", socket.display()))?;
    let keys: Vec<ssh_key::PublicKey> = client
        .list_all_identities()
        .context("listing ssh-agent keys")?
        .into_iter()
        .filter_map(|i| match i {
            ssh_agent_client_rs::Identity::PublicKey(k) => Some(k.into_owned()),
            ssh_agent_client_rs::Identity::Certificate(_) => None,
        })
        .collect();
    let want = fingerprint.trim();
    let Some(key) =
        keys.into_iter().find(|k| k.fingerprint(ssh_key::HashAlg::Sha256).to_string() == want)
    else {
        bail!("ssh-agent holds no key with fingerprint {want} (ssh-add -l lists them)");
    };
    let Some(ed) = key.key_data().ed25519() else {
        bail!("{want} is a {} key; patchmesh signs with ed25519 only", key.algorithm());
    };
    Ok(AdminKey { public: KeyId(ed.0), holder: Holder::Agent { socket, key } })
}

fn ssh_public(key: &KeyId) -> anyhow::Result<ssh_key::PublicKey> {
    Ok(ssh_key::PublicKey::from(ssh_key::public::Ed25519PublicKey(key.0)))
}

fn is_encrypted(bytes: &[u8]) -> bool {
    String::from_utf8_lossy(bytes).trim_start().starts_with(ARMOR_BEGIN)
}

/// Reads a key file's secret (encrypted or plain); agents hold no readable secret.
fn read_secret(path: &Path) -> anyhow::Result<SecretKey> {
    match AdminKey::load(path)?.holder {
        Holder::Secret { key, .. } => Ok(key),
        Holder::Agent { .. } => bail!("an ssh-agent key cannot be read or re-encrypted"),
    }
}

fn decrypt(path: &Path, bytes: &[u8]) -> anyhow::Result<SecretKey> {
    let pass = passphrase(&format!("passphrase for {}", path.display()))?;
    let mut identity = age::scrypt::Identity::new(pass.into());
    identity.set_max_work_factor(MAX_WORK_FACTOR);
    let plain = age::decrypt(&identity, bytes).map_err(|e| match e {
        age::DecryptError::DecryptionFailed
        | age::DecryptError::NoMatchingKeys
        | age::DecryptError::KeyDecryptionFailed => {
            anyhow::anyhow!("wrong passphrase for {}", path.display())
        }
        other => anyhow::anyhow!("{} cannot be decrypted: {other}", path.display()),
    })?;
    let text = String::from_utf8_lossy(&plain);
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed).map_err(|_| {
        anyhow::anyhow!("{} decrypts to something that is not a key", path.display())
    })?;
    Ok(SecretKey::from_seed(seed))
}

/// The key as an age file (scrypt, work factor calibrated by age to about a second here).
pub fn encrypt(key: &SecretKey, passphrase: &str) -> anyhow::Result<String> {
    encrypt_with(key, passphrase, None)
}

fn encrypt_with(key: &SecretKey, passphrase: &str, log_n: Option<u8>) -> anyhow::Result<String> {
    let mut recipient = age::scrypt::Recipient::new(passphrase.to_string().into());
    if let Some(n) = log_n {
        recipient.set_work_factor(n);
    }
    age::encrypt_and_armor(&recipient, format!("{}\n", hex::encode(key.seed())).as_bytes())
        .context("encrypting the key")
}

/// The passphrase: the first line of `$PATCHMESH_PASSPHRASE_FILE`, or asked on the terminal.
fn passphrase(prompt: &str) -> anyhow::Result<String> {
    if let Some(p) = std::env::var_os(PASSPHRASE_ENV) {
        let bytes = files::read_limited(Path::new(&p), 4096)
            .with_context(|| format!("reading the passphrase file named by {PASSPHRASE_ENV}"))?;
        let text = String::from_utf8(bytes).context("the passphrase file is not UTF-8")?;
        let line = text.lines().next().unwrap_or("").to_string();
        if line.is_empty() {
            bail!("the passphrase file named by {PASSPHRASE_ENV} is empty");
        }
        return Ok(line);
    }
    if !std::io::stdin().is_terminal() {
        bail!("{prompt}: no terminal to ask on; set {PASSPHRASE_ENV} to a file holding it");
    }
    rpassword::prompt_password(format!("{prompt}: ")).context("reading the passphrase")
}

/// A new passphrase, asked twice on a terminal (or read from `$PATCHMESH_PASSPHRASE_FILE`).
pub fn new_passphrase(prompt: &str) -> anyhow::Result<String> {
    let first = passphrase(prompt)?;
    if std::env::var_os(PASSPHRASE_ENV).is_none() {
        let again = passphrase("again")?;
        if again != first {
            bail!("the passphrases differ");
        }
    }
    if first.chars().count() < 8 {
        bail!("the passphrase is shorter than 8 characters");
    }
    Ok(first)
}

pub fn warn_unencrypted(path: &Path) {
    eprintln!(
        "patchmesh: warning: {} is written unencrypted; anyone who can read it can sign as this key",
        path.display()
    );
}

/// Writes a new secret key file: encrypted with `passphrase`, or plain hex.
pub fn write_new(path: &Path, key: &SecretKey, passphrase: Option<&str>) -> anyhow::Result<()> {
    match passphrase {
        Some(p) => write_new_private(path, encrypt(key, p)?.as_bytes()),
        None => Ok(files::write_key(path, key)?),
    }
}

fn write_new_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (never overwritten)", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Replaces (or creates) a private file, mode 0600: written beside it, then renamed.
pub(crate) fn replace_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("new.tmp");
    let _ = std::fs::remove_file(&tmp);
    write_new_private(&tmp, bytes)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// A fresh key from the OS.
pub fn generate() -> SecretKey {
    SecretKey::generate(&mut OsRng)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_round_trip_and_wrong_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::from_seed([9; 32]);
        // A small work factor keeps the test quick; the format is the same.
        let text = encrypt_with(&key, "correct horse", Some(12)).unwrap();
        assert!(text.starts_with(ARMOR_BEGIN));
        assert!(!text.contains(&hex::encode(key.seed())));
        let path = dir.path().join("k");
        std::fs::write(&path, &text).unwrap();
        let pass = dir.path().join("pass");
        std::fs::write(&pass, "correct horse\n").unwrap();
        // The only test in this binary that touches the variable.
        std::env::set_var(PASSPHRASE_ENV, &pass);
        let loaded = AdminKey::load(&path).unwrap();
        assert_eq!(loaded.public(), key.public());
        let body = b"x";
        assert_eq!(loaded.sign(Domain::Report, body).unwrap(), key.sign(Domain::Report, body));
        std::fs::write(&pass, "wrong horse\n").unwrap();
        let err = AdminKey::load(&path).err().unwrap().to_string();
        assert!(err.contains("wrong passphrase"), "{err}");
        std::env::remove_var(PASSPHRASE_ENV);
    }
}
