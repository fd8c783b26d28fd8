"""Bearer credentials that are not OAuth tokens: SCIM provisioning tokens for HR systems."""
