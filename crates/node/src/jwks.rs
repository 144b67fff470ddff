//! JWKS (SPEC section 7, `auth.jwks_url`): placeholder, filled in below.

#[derive(Default)]
pub struct JwksHolder {}
