//! DTLS-SRTP (RFC 5764) on the server side, over datagrams carried by the rings.
//!
//! The data plane hands DTLS records up (`Event::DtlsReceived`); this module feeds
//! them to a webrtc-dtls server through [`RingConn`], sends its records back down
//! (`Command::SendDtls`), checks the peer's certificate against the fingerprint
//! in its SDP answer and exports the SRTP master keys.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use shared::{Command, ConnId, SrtpProfile};
use tokio::sync::{mpsc, Mutex};
use webrtc_dtls::config::{ClientAuthType, Config as DtlsConfig, ExtendedMasterSecretType};
use webrtc_dtls::conn::DTLSConn;
use webrtc_dtls::crypto::Certificate;
use webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use webrtc_util::KeyingMaterialExporter;

use crate::media::CommandSender;

/// The node's DTLS identity: one self-signed certificate, advertised by its
/// SHA-256 fingerprint in every offer.
#[derive(Clone)]
pub struct DtlsIdentity {
    certificate: Certificate,
    /// Uppercase, colon-separated hex, as in `a=fingerprint:sha-256 …`.
    pub fingerprint_sha256: String,
}

impl DtlsIdentity {
    pub fn generate() -> anyhow::Result<Self> {
        let certificate = Certificate::generate_self_signed(vec!["sora".to_owned()])
            .map_err(|e| anyhow::anyhow!("generating the DTLS certificate: {e}"))?;
        let der = certificate
            .certificate
            .first()
            .ok_or_else(|| anyhow::anyhow!("generated DTLS certificate is empty"))?;
        let fingerprint_sha256 = fingerprint(der.as_ref());
        Ok(DtlsIdentity {
            certificate,
            fingerprint_sha256,
        })
    }
}

/// SHA-256 fingerprint of a DER certificate in SDP notation.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let mut out = String::with_capacity(digest.len() * 3);
    for (i, b) in digest.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(&format!("{b:02X}"));
    }
    out
}

/// SRTP keys exported from a finished handshake, from the server's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrtpKeys {
    pub profile: SrtpProfile,
    pub local_key: Vec<u8>,
    pub local_salt: Vec<u8>,
    pub remote_key: Vec<u8>,
    pub remote_salt: Vec<u8>,
}

impl SrtpKeys {
    pub fn into_command(self, conn: ConnId) -> Command {
        Command::SetSrtpKeys {
            conn,
            profile: self.profile,
            local_key: self.local_key,
            local_salt: self.local_salt,
            remote_key: self.remote_key,
            remote_salt: self.remote_salt,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DtlsError {
    #[error("DTLS handshake failed: {0}")]
    Handshake(String),
    #[error("DTLS handshake did not finish within {0:?}")]
    Timeout(Duration),
    #[error("the peer's certificate does not match the fingerprint in its answer")]
    FingerprintMismatch,
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    #[error("the peer negotiated no supported SRTP profile")]
    NoSrtpProfile,
    #[error("exporting SRTP keys: {0}")]
    Export(String),
}

/// The datagram transport under webrtc-dtls: reads what the data plane passed up
/// for this connection, writes through the core's command ring.
pub struct RingConn {
    conn: ConnId,
    incoming: Mutex<mpsc::Receiver<Vec<u8>>>,
    commands: CommandSender,
    peer: SocketAddr,
}

impl RingConn {
    pub fn new(conn: ConnId, incoming: mpsc::Receiver<Vec<u8>>, commands: CommandSender) -> Self {
        RingConn {
            conn,
            incoming: Mutex::new(incoming),
            commands,
            // webrtc-dtls only uses the address for logging and server name defaults.
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }
}

type UtilResult<T> = std::result::Result<T, webrtc_util::Error>;

#[async_trait]
impl webrtc_util::Conn for RingConn {
    async fn connect(&self, _addr: SocketAddr) -> UtilResult<()> {
        Ok(())
    }
    async fn recv(&self, buf: &mut [u8]) -> UtilResult<usize> {
        let mut rx = self.incoming.lock().await;
        match rx.recv().await {
            Some(d) => {
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                Ok(n)
            }
            None => Err(webrtc_util::Error::ErrClosedListener),
        }
    }
    async fn recv_from(&self, buf: &mut [u8]) -> UtilResult<(usize, SocketAddr)> {
        let n = self.recv(buf).await?;
        Ok((n, self.peer))
    }
    async fn send(&self, buf: &[u8]) -> UtilResult<usize> {
        self.commands.send(Command::SendDtls {
            conn: self.conn,
            data: buf.to_vec(),
        });
        Ok(buf.len())
    }
    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> UtilResult<usize> {
        self.send(buf).await
    }
    fn local_addr(&self) -> UtilResult<SocketAddr> {
        Ok(SocketAddr::from(([0, 0, 0, 0], 0)))
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.peer)
    }
    async fn close(&self) -> UtilResult<()> {
        Ok(())
    }
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// Runs the server side of the handshake to completion, verifies the peer's
/// certificate against `expected_fingerprint` (from the answer, awaited lazily:
/// the client may finish DTLS before its answer is processed) and exports keys.
pub async fn handshake(
    identity: &DtlsIdentity,
    transport: RingConn,
    expected_fingerprint: tokio::sync::watch::Receiver<Option<String>>,
    timeout: Duration,
) -> Result<(Arc<DTLSConn>, SrtpKeys), DtlsError> {
    let config = DtlsConfig {
        certificates: vec![identity.certificate.clone()],
        srtp_protection_profiles: vec![
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
        ],
        client_auth: ClientAuthType::RequireAnyClientCert,
        extended_master_secret: ExtendedMasterSecretType::Request,
        // The peer's certificate is self-signed; it is checked against the SDP fingerprint below.
        insecure_skip_verify: true,
        mtu: 1200,
        ..Default::default()
    };
    let conn: Arc<dyn webrtc_util::Conn + Send + Sync> = Arc::new(transport);
    let dtls = tokio::time::timeout(timeout, DTLSConn::new(conn, config, false, None))
        .await
        .map_err(|_| DtlsError::Timeout(timeout))?
        .map_err(|e| DtlsError::Handshake(e.to_string()))?;
    let dtls = Arc::new(dtls);

    let state = dtls.connection_state().await;
    let peer_cert = state
        .peer_certificates
        .first()
        .ok_or(DtlsError::NoPeerCertificate)?;
    let actual = fingerprint(peer_cert);
    let mut expected_rx = expected_fingerprint;
    let expected = tokio::time::timeout(timeout, async {
        loop {
            if let Some(fp) = expected_rx.borrow_and_update().clone() {
                return Some(fp);
            }
            if expected_rx.changed().await.is_err() {
                return None;
            }
        }
    })
    .await
    .map_err(|_| DtlsError::Timeout(timeout))?
    .ok_or(DtlsError::FingerprintMismatch)?;
    if !expected.eq_ignore_ascii_case(&actual) {
        return Err(DtlsError::FingerprintMismatch);
    }

    let (profile, key_len, salt_len) = match dtls.selected_srtpprotection_profile() {
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => {
            (SrtpProfile::Aes128CmHmacSha1_80, 16, 14)
        }
        SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => (SrtpProfile::AeadAes128Gcm, 16, 12),
        _ => return Err(DtlsError::NoSrtpProfile),
    };
    let material = state
        .export_keying_material("EXTRACTOR-dtls_srtp", &[], 2 * (key_len + salt_len))
        .await
        .map_err(|e| DtlsError::Export(e.to_string()))?;
    Ok((
        dtls,
        split_keying_material(profile, &material, key_len, salt_len),
    ))
}

/// RFC 5764 §4.2: client key, server key, client salt, server salt. This node is
/// the DTLS server, so it protects with the server half.
fn split_keying_material(
    profile: SrtpProfile,
    m: &[u8],
    key_len: usize,
    salt_len: usize,
) -> SrtpKeys {
    let client_key = &m[..key_len];
    let server_key = &m[key_len..2 * key_len];
    let client_salt = &m[2 * key_len..2 * key_len + salt_len];
    let server_salt = &m[2 * key_len + salt_len..2 * (key_len + salt_len)];
    SrtpKeys {
        profile,
        local_key: server_key.to_vec(),
        local_salt: server_salt.to_vec(),
        remote_key: client_key.to_vec(),
        remote_salt: client_salt.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_format() {
        let fp = fingerprint(b"abc");
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(fp.starts_with("BA:78:16:BF"));
    }

    #[test]
    fn keying_material_split_server_side() {
        let m: Vec<u8> = (0u8..60).collect();
        let k = split_keying_material(SrtpProfile::Aes128CmHmacSha1_80, &m, 16, 14);
        assert_eq!(k.remote_key, (0u8..16).collect::<Vec<_>>());
        assert_eq!(k.local_key, (16u8..32).collect::<Vec<_>>());
        assert_eq!(k.remote_salt, (32u8..46).collect::<Vec<_>>());
        assert_eq!(k.local_salt, (46u8..60).collect::<Vec<_>>());
    }
}
