-- bulkhead schema 1: the encrypted store shared by several gateways, and their leases.
-- Nothing here is readable without a tenant's key: transcripts, session metadata and documents
-- are sealed by the gateway before they are sent; sessions are named by keyed digests.

-- Each tenant's age identity, wrapped to the operator's master key. Deleting a row is the
-- crypto-shred: everything else of the tenant is ciphertext under that identity.
CREATE TABLE bh_tenants (
    tenant   text PRIMARY KEY,
    identity bytea NOT NULL
);

-- The session index: `sid` is a keyed digest of the session key; `meta` (sealed to the tenant)
-- holds the key and the session's data key. `next_seq` and `updated_ms` are counters.
CREATE TABLE bh_sessions (
    tenant     text   NOT NULL,
    sid        text   NOT NULL,
    meta       bytea  NOT NULL,
    next_seq   bigint NOT NULL,
    updated_ms bigint NOT NULL,
    PRIMARY KEY (tenant, sid)
);

-- Transcript records, each sealed with the session's data key and bound to (tenant, sid, seq).
CREATE TABLE bh_records (
    tenant text   NOT NULL,
    sid    text   NOT NULL,
    seq    bigint NOT NULL,
    sealed bytea  NOT NULL,
    PRIMARY KEY (tenant, sid, seq)
);

-- Small per-tenant documents (pairing approvals, the chat inbox), sealed to the tenant.
CREATE TABLE bh_documents (
    tenant text  NOT NULL,
    name   text  NOT NULL,
    sealed bytea NOT NULL,
    PRIMARY KEY (tenant, name)
);

-- Leases on things that must have exactly one owner (a bot's long poll). `fence` grows by one
-- at every change of holder; `position` is the owner's progress (a Bot API update offset),
-- written only by the holder of the current fence.
CREATE TABLE bh_leases (
    name       text        PRIMARY KEY,
    holder     text        NOT NULL,
    fence      bigint      NOT NULL,
    expires_at timestamptz NOT NULL,
    position   bigint
);

-- The gateways that share this database, as last seen (for /admin/status and doctor).
CREATE TABLE bh_gateways (
    id         text        PRIMARY KEY,
    started_at timestamptz NOT NULL,
    seen_at    timestamptz NOT NULL
);

-- Each gateway's usage today per tenant (counters only), so daily budgets hold across gateways.
CREATE TABLE bh_usage (
    gateway      text   NOT NULL,
    tenant       text   NOT NULL,
    day          bigint NOT NULL,
    model_tokens bigint NOT NULL,
    sandbox_ms   bigint NOT NULL,
    PRIMARY KEY (gateway, tenant, day)
);
