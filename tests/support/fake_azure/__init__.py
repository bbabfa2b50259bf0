"""Local servers that speak Azure's wire protocols to the real SDKs: Microsoft Entra token endpoint
(workload identity), Key Vault secrets (challenge-based bearer auth, over TLS), App Configuration
(HMAC or bearer auth, filters, paging, ETags), plus a test CA, an HTTPS CONNECT proxy that routes real
Azure host names to them, and a guard that keeps every connection on loopback."""
