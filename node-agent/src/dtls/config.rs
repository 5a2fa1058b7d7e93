//! The `rtc-dtls` configuration: PSK only, one suite, extended master secret required.

use std::sync::Arc;

use rtc_dtls::config::{ConfigBuilder, ExtendedMasterSecretType, HandshakeConfig};

use super::{AcceptIdentity, DtlsError, FLIGHT_INTERVAL, PEER, Role, SUITE};

/// Sent as SNI by the client; set so the crate does not invent one.
const SERVER_NAME: &str = "rolomesh";

pub(super) fn build(
    role: Role,
    identity: Vec<u8>,
    psk: [u8; 32],
    accept: AcceptIdentity,
) -> Result<Arc<HandshakeConfig>, DtlsError> {
    let provider =
        rtc_dtls::crypto_provider::default_provider().map_err(|e| DtlsError::Provider(Box::new(e)))?;
    let config = ConfigBuilder::default()
        .with_crypto_provider(provider)
        .with_cipher_suites(vec![SUITE])
        .with_extended_master_secret(ExtendedMasterSecretType::Require)
        // Called with the peer's identity (server) or identity hint (client); an error aborts
        // the handshake with a fatal alert.
        .with_psk(Some(Arc::new(move |peer: &[u8]| {
            if accept(peer) {
                Ok(psk.to_vec())
            } else {
                Err(std::io::Error::other("PSK identity refused").into())
            }
        })))
        // The crate sends this as the client's PSK identity or as the server's identity hint.
        .with_psk_identity_hint(Some(identity))
        .with_flight_interval(FLIGHT_INTERVAL)
        .with_server_name(SERVER_NAME.to_owned())
        // PSK suites only, so no certificate is ever sent or checked; this merely stops the
        // builder from generating a throwaway CA certificate for a verifier we never use.
        .with_insecure_skip_verify(true)
        .build(role == Role::Client, Some(PEER))
        .map_err(|e| DtlsError::Config { role, source: Box::new(e) })?;
    Ok(Arc::new(config))
}
