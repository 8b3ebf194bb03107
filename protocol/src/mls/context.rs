//! Group configuration and the checks on a Kring group context (metadata extension,
//! required capabilities, the hub as the single external sender).

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _, VLBytes};
use openmls::prelude::{
    Capabilities, Credential, CredentialType, Extension, ExtensionType, Extensions, ExternalSender,
    GroupContext, MlsGroupCreateConfig, MlsGroupJoinConfig, PURE_PLAINTEXT_WIRE_FORMAT_POLICY,
    RequiredCapabilitiesExtension, SenderRatchetConfiguration, UnknownExtension,
};

use super::credential::{validate_credential, x509_credential};
use super::{
    CIPHERSUITE, CommunityMeta, CredentialValidator, KRING_EXTENSION_TYPE, MemberId, MlsError,
    PAST_EPOCHS,
};

/// Out-of-order tolerance of the sender ratchets (generations kept per sender).
const OUT_OF_ORDER_TOLERANCE: u32 = 64;
/// How far a sender's generation may jump ahead (notices withheld by policy leave
/// gaps).
const MAXIMUM_FORWARD_DISTANCE: u32 = 10_000;
/// Application messages are padded to a multiple of this many bytes.
const PADDING: usize = 256;

/// Leaf-node capabilities of every Kring client: our ciphersuite, x509 credentials,
/// the Kring metadata extension and last-resort key packages (openmls requires a
/// key package's extensions to be listed in its leaf's capabilities).
pub(crate) fn leaf_capabilities() -> Capabilities {
    Capabilities::new(
        None,
        Some(&[CIPHERSUITE]),
        Some(&[
            ExtensionType::Unknown(KRING_EXTENSION_TYPE),
            ExtensionType::LastResort,
        ]),
        None,
        Some(&[CredentialType::X509]),
    )
}

fn required_capabilities() -> RequiredCapabilitiesExtension {
    RequiredCapabilitiesExtension::new(
        &[ExtensionType::Unknown(KRING_EXTENSION_TYPE)],
        &[],
        &[CredentialType::X509],
    )
}

fn sender_ratchet() -> SenderRatchetConfiguration {
    SenderRatchetConfiguration::new(OUT_OF_ORDER_TOLERANCE, MAXIMUM_FORWARD_DISTANCE)
}

/// Configuration for creating a community group.
pub(crate) fn create_config(extensions: Extensions<GroupContext>) -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .ciphersuite(CIPHERSUITE)
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(PAST_EPOCHS)
        .sender_ratchet_configuration(sender_ratchet())
        .padding_size(PADDING)
        .use_ratchet_tree_extension(true)
        .capabilities(leaf_capabilities())
        .with_group_context_extensions(extensions)
        .build()
}

/// Configuration for joining a community group from a Welcome.
pub(crate) fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(PAST_EPOCHS)
        .sender_ratchet_configuration(sender_ratchet())
        .padding_size(PADDING)
        .use_ratchet_tree_extension(true)
        .build()
}

/// The initial group-context extensions: metadata, required capabilities and the
/// hub relay as the only external sender.
pub(crate) fn initial_extensions(
    meta: &CommunityMeta,
    hub_chain: &[Vec<u8>],
    hub_signature_key: &[u8],
) -> Result<Extensions<GroupContext>, MlsError> {
    let hub = ExternalSender::new(hub_signature_key.into(), x509_credential(hub_chain)?);
    Extensions::from_vec(vec![
        meta_extension(meta)?,
        Extension::RequiredCapabilities(required_capabilities()),
        Extension::ExternalSenders(vec![hub]),
    ])
    .map_err(|e| MlsError::Internal(format!("group context extensions: {e}")))
}

/// The same extensions as `current`, with the metadata replaced by `meta`.
pub(crate) fn extensions_with_meta(
    current: &Extensions<GroupContext>,
    meta: &CommunityMeta,
) -> Result<Extensions<GroupContext>, MlsError> {
    let mut extensions = current.clone();
    extensions
        .add_or_replace(meta_extension(meta)?)
        .map_err(|e| MlsError::Internal(format!("group context extensions: {e}")))?;
    Ok(extensions)
}

fn meta_extension(meta: &CommunityMeta) -> Result<Extension, MlsError> {
    Ok(Extension::Unknown(
        KRING_EXTENSION_TYPE,
        UnknownExtension(meta.encode()?),
    ))
}

/// Reads the community metadata from a group context and checks that the group id
/// is the community id.
///
/// # Errors
/// [`MlsError::InvalidMeta`] if the extension is missing, malformed, or names
/// another community than the group id.
pub fn community_meta(context: &GroupContext) -> Result<CommunityMeta, MlsError> {
    let extension = context
        .extensions()
        .unknown(KRING_EXTENSION_TYPE)
        .ok_or_else(|| MlsError::InvalidMeta("group has no Kring metadata extension".into()))?;
    let meta = CommunityMeta::decode(&extension.0)?;
    if meta.community_id.as_bytes() != context.group_id().as_slice() {
        return Err(MlsError::InvalidMeta(format!(
            "metadata names community {} but the group id is {}",
            meta.community_id,
            group_name(context.group_id().as_slice())
        )));
    }
    Ok(meta)
}

/// Lossy, bounded rendering of a group id for error messages.
pub(crate) fn group_name(group_id: &[u8]) -> String {
    let shown = group_id.get(..group_id.len().min(128)).unwrap_or_default();
    String::from_utf8_lossy(shown).into_owned()
}

/// The credential and signature key of an external sender (openmls keeps the
/// accessors private, so the RFC 9420 encoding is read back).
pub(crate) fn external_sender_parts(
    sender: &ExternalSender,
) -> Result<(Credential, Vec<u8>), MlsError> {
    let bytes = sender
        .tls_serialize_detached()
        .map_err(|e| MlsError::Internal(format!("external sender encoding: {e}")))?;
    let mut rest = bytes.as_slice();
    let key = VLBytes::tls_deserialize(&mut rest)
        .map_err(|e| MlsError::malformed("external sender", e))?;
    let credential = Credential::tls_deserialize(&mut rest)
        .map_err(|e| MlsError::malformed("external sender", e))?;
    if !rest.is_empty() {
        return Err(MlsError::malformed("external sender", "trailing bytes"));
    }
    Ok((credential, key.as_slice().to_vec()))
}

/// The validated Kring view of a group context.
#[derive(Debug, Clone)]
pub(crate) struct CheckedContext {
    pub(crate) meta: CommunityMeta,
    /// The hub relay's id (validated external sender).
    pub(crate) hub: MemberId,
}

/// Checks everything Kring requires of a group context: ciphersuite, metadata,
/// required capabilities, and exactly one external sender whose credential is valid
/// and names the community's hub relay.
pub(crate) fn check_context(
    context: &GroupContext,
    validator: &impl CredentialValidator,
) -> Result<CheckedContext, MlsError> {
    if context.ciphersuite() != CIPHERSUITE {
        return Err(MlsError::Forbidden(format!(
            "ciphersuite {:?} is not {CIPHERSUITE:?}",
            context.ciphersuite()
        )));
    }
    let meta = community_meta(context)?;
    let required = context
        .required_capabilities()
        .ok_or_else(|| MlsError::InvalidMeta("no required capabilities".into()))?;
    if !required
        .extension_types()
        .contains(&ExtensionType::Unknown(KRING_EXTENSION_TYPE))
        || !required.credential_types().contains(&CredentialType::X509)
    {
        return Err(MlsError::InvalidMeta(
            "required capabilities lack the Kring extension or x509 credentials".into(),
        ));
    }
    let senders = context
        .extensions()
        .external_senders()
        .ok_or_else(|| MlsError::InvalidMeta("the hub is not an external sender".into()))?;
    let [hub_sender] = senders.as_slice() else {
        return Err(MlsError::InvalidMeta(format!(
            "{} external senders, expected exactly the hub",
            senders.len()
        )));
    };
    let (credential, key) = external_sender_parts(hub_sender)?;
    let hub = validate_credential(validator, &credential, &key)?;
    if hub != meta.hub() {
        return Err(MlsError::InvalidMeta(format!(
            "external sender is {hub}, but the hub of {} is {}",
            meta.community_id,
            meta.hub()
        )));
    }
    Ok(CheckedContext { meta, hub })
}

/// Checks a group-context change made by a commit. Only the admin list may change;
/// returns the new metadata if it changed.
pub(crate) fn check_context_transition(
    old: &GroupContext,
    new: &GroupContext,
    validator: &impl CredentialValidator,
) -> Result<Option<CommunityMeta>, MlsError> {
    if old.extensions() == new.extensions() {
        return Ok(None);
    }
    let old_meta = community_meta(old)?;
    let checked = check_context(new, validator)?;
    if checked.meta.community_id != old_meta.community_id
        || checked.meta.max_label != old_meta.max_label
        || checked.meta.update_days != old_meta.update_days
        || checked.meta.retention_days != old_meta.retention_days
    {
        return Err(MlsError::Forbidden(
            "the community id, maximum label, update period and retention period cannot \
             change"
                .into(),
        ));
    }
    if old.extensions().external_senders() != new.extensions().external_senders()
        || old.required_capabilities() != new.required_capabilities()
    {
        return Err(MlsError::Forbidden(
            "the hub (external sender) and required capabilities cannot change".into(),
        ));
    }
    if new.extensions().iter().count() != old.extensions().iter().count() {
        return Err(MlsError::Forbidden(
            "group context extensions cannot be added or removed".into(),
        ));
    }
    Ok((checked.meta != old_meta).then_some(checked.meta))
}
