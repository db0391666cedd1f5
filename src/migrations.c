/*
 * migrations.c: see migrations.h. The schema of limits (PRODUCT.md §3, reliability-notes §3).
 *
 * The money rules are enforced by the database itself, so that no code path (a bug, a manual
 * fix, a future feature) can break them:
 *   - amounts and balances are BIGINT minor units with range CHECKs;
 *   - a load's (card_id, user_id) must be a real card and its owner (composite foreign key), so
 *     the per-user window sums can never count a load against the wrong user;
 *   - a succeeded load carries its Braintree transaction id, is final, and the ledger is
 *     append-only (triggers), so "balance = sum of succeeded loads" cannot be undone by an
 *     UPDATE or DELETE of a load;
 *   - order_id is unique, so Braintree's duplicate-order protection and reconciliation by
 *     order id refer to exactly one load.
 * Times come from the database clock (now()), one clock for every instance.
 */
#include "lim/migrations.h"

#include "lim/common.h"
#include "lim/store.h"

static const lim_migration_t migrations[] = {
    {1, "initial schema",
     /* Users. The Braintree customer id is ours to choose (a UUID string, made here so every
      * user has one from the start); braintree_customer_created records whether the customer
      * exists at Braintree yet, so it is created once and remembered. */
     "CREATE TABLE users (\n"
     "    id bigserial PRIMARY KEY,\n"
     "    username text NOT NULL CONSTRAINT users_username_key UNIQUE\n"
     "        CONSTRAINT users_username_length CHECK (octet_length(username) BETWEEN 1 AND 255),\n"
     "    email text NOT NULL CONSTRAINT users_email_key UNIQUE\n"
     "        CONSTRAINT users_email_length CHECK (octet_length(email) BETWEEN 3 AND 320),\n"
     "    braintree_customer_id varchar(36) NOT NULL DEFAULT gen_random_uuid()::text\n"
     "        CONSTRAINT users_braintree_customer_id_key UNIQUE,\n"
     "    braintree_customer_created boolean NOT NULL DEFAULT false,\n"
     "    created_at timestamptz NOT NULL DEFAULT now()\n"
     ");\n"

     /* API keys: only the SHA-256 of the key is stored. The unique index on key_hash is the
      * lookup index; revoked keys stay (for audit) with revoked_at set. */
     "CREATE TABLE api_keys (\n"
     "    id bigserial PRIMARY KEY,\n"
     "    user_id bigint NOT NULL REFERENCES users (id),\n"
     "    key_hash bytea NOT NULL CONSTRAINT api_keys_key_hash_key UNIQUE\n"
     "        CONSTRAINT api_keys_key_hash_sha256 CHECK (octet_length(key_hash) = 32),\n"
     "    prefix text NOT NULL\n"
     "        CONSTRAINT api_keys_prefix_length CHECK (octet_length(prefix) BETWEEN 1 AND 32),\n"
     "    created_at timestamptz NOT NULL DEFAULT now(),\n"
     "    revoked_at timestamptz NULL\n"
     ");\n"
     "CREATE INDEX api_keys_user_id_idx ON api_keys (user_id);\n"

     /* Cards. The name fits lim_card_t.name (127 bytes and the terminator). The balance
      * ceiling (10^11 cents) is a hard backstop far above any configured LIMIT_BALANCE; the
      * configured limit itself is checked by the load flow. (user_id, name) is unique and also
      * serves as the index on user_id; (id, user_id) is unique so loads can reference it. */
     "CREATE TABLE cards (\n"
     "    id bigserial PRIMARY KEY,\n"
     "    user_id bigint NOT NULL REFERENCES users (id),\n"
     "    name text NOT NULL\n"
     "        CONSTRAINT cards_name_length CHECK (octet_length(name) BETWEEN 1 AND 127),\n"
     "    balance_minor bigint NOT NULL DEFAULT 0\n"
     "        CONSTRAINT cards_balance_range\n"
     "        CHECK (balance_minor >= 0 AND balance_minor <= 100000000000),\n"
     "    created_at timestamptz NOT NULL DEFAULT now(),\n"
     "    CONSTRAINT cards_user_id_name_key UNIQUE (user_id, name),\n"
     "    CONSTRAINT cards_id_user_id_key UNIQUE (id, user_id)\n"
     ");\n"

     /* Loads: the ledger. user_id is a copy of the card's owner, kept so the per-user window
      * sums need no join; the composite foreign key makes a disagreement impossible (and, with
      * cards.user_id referencing users, also makes user_id a valid user). Its check takes a KEY
      * SHARE lock on the card, which does not conflict with balance updates. The amount ceiling
      * is LIM_MONEY_MAX_MINOR. */
     "CREATE TABLE loads (\n"
     "    id bigserial PRIMARY KEY,\n"
     "    card_id bigint NOT NULL,\n"
     "    user_id bigint NOT NULL,\n"
     "    amount_minor bigint NOT NULL\n"
     "        CONSTRAINT loads_amount_range\n"
     "        CHECK (amount_minor > 0 AND amount_minor <= 10000000000000),\n"
     "    status text NOT NULL DEFAULT 'pending'\n"
     "        CONSTRAINT loads_status_valid\n"
     "        CHECK (status IN ('pending', 'succeeded', 'declined', 'failed', 'unknown')),\n"
     "    order_id text NOT NULL CONSTRAINT loads_order_id_key UNIQUE\n"
     "        CONSTRAINT loads_order_id_length CHECK (octet_length(order_id) BETWEEN 1 AND 255),\n"
     "    braintree_transaction_id text NULL\n"
     "        CONSTRAINT loads_braintree_transaction_id_length\n"
     "        CHECK (octet_length(braintree_transaction_id) BETWEEN 1 AND 255),\n"
     "    error_code text NULL,\n"
     "    error_text text NULL,\n"
     "    idempotency_key text NULL\n"
     "        CONSTRAINT loads_idempotency_key_length\n"
     "        CHECK (octet_length(idempotency_key) BETWEEN 1 AND 255),\n"
     "    created_at timestamptz NOT NULL DEFAULT now(),\n"
     "    updated_at timestamptz NOT NULL DEFAULT now(),\n"
     "    CONSTRAINT loads_card_owner_fkey FOREIGN KEY (card_id, user_id)\n"
     "        REFERENCES cards (id, user_id),\n"
     "    CONSTRAINT loads_succeeded_has_transaction\n"
     "        CHECK (status <> 'succeeded' OR braintree_transaction_id IS NOT NULL)\n"
     ");\n"
     /* The user's rolling sums count succeeded and in-flight loads only; this partial index
      * carries the amount, so a 365-day sum reads the index alone. */
     "CREATE INDEX loads_user_window_idx ON loads (user_id, created_at) INCLUDE (amount_minor)\n"
     "    WHERE status IN ('pending', 'succeeded', 'unknown');\n"
     /* A card's in-flight total (the balance rule); in-flight loads are few, so it is tiny. */
     "CREATE INDEX loads_card_inflight_idx ON loads (card_id) INCLUDE (amount_minor)\n"
     "    WHERE status IN ('pending', 'unknown');\n"
     /* Reconciliation: the oldest unresolved loads first. */
     "CREATE INDEX loads_reconcile_idx ON loads (status, created_at)\n"
     "    WHERE status IN ('pending', 'unknown');\n"
     /* A card's loads, newest first (and the foreign key's index on card_id). */
     "CREATE INDEX loads_card_id_idx ON loads (card_id, id DESC);\n"

     /* The Braintree order id defaults to "load-<id>": a BEFORE INSERT trigger sees the id
      * the sequence just gave, which a column DEFAULT cannot. An explicit order_id is kept. */
     "CREATE FUNCTION loads_fill_order_id() RETURNS trigger LANGUAGE plpgsql AS $f$\n"
     "BEGIN\n"
     "    IF NEW.order_id IS NULL THEN\n"
     "        NEW.order_id := 'load-' || NEW.id;\n"
     "    END IF;\n"
     "    RETURN NEW;\n"
     "END\n"
     "$f$;\n"
     "CREATE TRIGGER loads_fill_order_id BEFORE INSERT ON loads\n"
     "    FOR EACH ROW EXECUTE FUNCTION loads_fill_order_id();\n"

     /* What a load is never allowed to become. A succeeded load has been credited: leaving
      * that status would let reconciliation credit it again, or leave a balance without its
      * load. Nothing returns to pending (that would re-enter the charge flow), and the
      * identity of a load (card, owner, amount, order id, time) never changes. updated_at
      * follows every change. */
     "CREATE FUNCTION loads_guard_update() RETURNS trigger LANGUAGE plpgsql AS $f$\n"
     "BEGIN\n"
     "    IF NEW.id <> OLD.id OR NEW.card_id <> OLD.card_id OR NEW.user_id <> OLD.user_id\n"
     "       OR NEW.amount_minor <> OLD.amount_minor OR NEW.order_id <> OLD.order_id\n"
     "       OR NEW.created_at <> OLD.created_at THEN\n"
     "        RAISE EXCEPTION 'load %: id, card_id, user_id, amount_minor, order_id and "
     "created_at never change', OLD.id\n"
     "            USING ERRCODE = 'check_violation';\n"
     "    END IF;\n"
     "    IF OLD.status = 'succeeded' AND NEW.status <> 'succeeded' THEN\n"
     "        RAISE EXCEPTION 'load %: succeeded is final (it was credited)', OLD.id\n"
     "            USING ERRCODE = 'check_violation';\n"
     "    END IF;\n"
     "    IF NEW.status = 'pending' AND OLD.status <> 'pending' THEN\n"
     "        RAISE EXCEPTION 'load %: % cannot go back to pending', OLD.id, OLD.status\n"
     "            USING ERRCODE = 'check_violation';\n"
     "    END IF;\n"
     "    IF OLD.braintree_transaction_id IS NOT NULL\n"
     "       AND NEW.braintree_transaction_id IS DISTINCT FROM OLD.braintree_transaction_id THEN\n"
     "        RAISE EXCEPTION 'load %: braintree_transaction_id never changes once set', OLD.id\n"
     "            USING ERRCODE = 'check_violation';\n"
     "    END IF;\n"
     "    NEW.updated_at := now();\n"
     "    RETURN NEW;\n"
     "END\n"
     "$f$;\n"
     "CREATE TRIGGER loads_guard_update BEFORE UPDATE ON loads\n"
     "    FOR EACH ROW EXECUTE FUNCTION loads_guard_update();\n"

     /* The ledger is append-only (reliability-notes §3.3): corrections are new rows. */
     "CREATE FUNCTION loads_forbid_delete() RETURNS trigger LANGUAGE plpgsql AS $f$\n"
     "BEGIN\n"
     "    RAISE EXCEPTION 'load %: the ledger is append-only', OLD.id\n"
     "        USING ERRCODE = 'check_violation';\n"
     "END\n"
     "$f$;\n"
     "CREATE TRIGGER loads_forbid_delete BEFORE DELETE ON loads\n"
     "    FOR EACH ROW EXECUTE FUNCTION loads_forbid_delete();\n"

     /* Idempotency-Key records (PRODUCT.md §2): one per user and key. request_fingerprint is
      * the SHA-256 of the canonical request, so a reuse with a different request is told
      * apart; status 'running' with locked_at marks a request in progress (409, or taken over
      * once the lock is stale), 'done' holds the stored response for replays. load_id links
      * the load the request created, for a replay of a pending load. Pruned by created_at. */
     "CREATE TABLE idempotency_keys (\n"
     "    user_id bigint NOT NULL REFERENCES users (id),\n"
     "    key text NOT NULL\n"
     "        CONSTRAINT idempotency_keys_key_length CHECK (octet_length(key) BETWEEN 1 AND 255),\n"
     "    request_fingerprint bytea NOT NULL\n"
     "        CONSTRAINT idempotency_keys_fingerprint_sha256\n"
     "        CHECK (octet_length(request_fingerprint) = 32),\n"
     "    status text NOT NULL DEFAULT 'running'\n"
     "        CONSTRAINT idempotency_keys_status_valid CHECK (status IN ('running', 'done')),\n"
     "    locked_at timestamptz NULL DEFAULT now(),\n"
     "    load_id bigint NULL REFERENCES loads (id),\n"
     "    response_status integer NULL\n"
     "        CONSTRAINT idempotency_keys_response_status_range\n"
     "        CHECK (response_status BETWEEN 100 AND 599),\n"
     "    response_body text NULL,\n"
     "    created_at timestamptz NOT NULL DEFAULT now(),\n"
     "    updated_at timestamptz NOT NULL DEFAULT now(),\n"
     "    PRIMARY KEY (user_id, key),\n"
     "    CONSTRAINT idempotency_keys_done_has_response\n"
     "        CHECK ((status = 'done') = (response_status IS NOT NULL AND response_body IS NOT "
     "NULL))\n"
     ");\n"
     "CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);\n"},
    {2, "load flow functions",
     /* Reconciliation leases: a reconciler claims a load by moving reconcile_after into the
      * future, so several instances never work on the same load at once and a crashed
      * reconciler's claim simply runs out. */
     "ALTER TABLE loads ADD COLUMN reconcile_after timestamptz NULL;\n"

     /* The load flow's two database steps as functions, so each is one round trip and one
      * short transaction (PRODUCT.md §3; no lock is held across the gateway call).
      *
      * lim_load_begin: under the user's row lock (every window is per user, and a card has one
      * owner, so this serializes exactly the loads that can affect each other), re-check all
      * four rules from the ledger itself and record the load as pending. The windows match
      * card_get: created_at later than now() minus 24, 720 and 8760 hours; succeeded and
      * in-flight loads count; the balance rule counts the card's balance plus its in-flight
      * loads. The outcome is 'ok' (the load id and time), 'limit' (with the totals for the
      * messages), or 'not_found' (no such card, or not this user's: ownership in the SQL). */
     "CREATE FUNCTION lim_load_begin(p_user bigint, p_card bigint, p_amount bigint,\n"
     "    p_order text, p_idem text, p_limit_day bigint, p_limit_month bigint,\n"
     "    p_limit_year bigint, p_limit_balance bigint)\n"
     "RETURNS TABLE (outcome text, load_id bigint, created_ms bigint, day_minor bigint,\n"
     "    month_minor bigint, year_minor bigint, card_minor bigint, customer_id text,\n"
     "    customer_created boolean)\n"
     "LANGUAGE plpgsql AS $f$\n"
     "DECLARE\n"
     "    v_balance bigint;\n"
     "    v_inflight bigint;\n"
     "    v_id bigint;\n"
     "    v_created timestamptz;\n"
     "BEGIN\n"
     "    SELECT u.braintree_customer_id, u.braintree_customer_created\n"
     "      INTO customer_id, customer_created FROM users u WHERE u.id = p_user FOR UPDATE;\n"
     "    SELECT c.balance_minor INTO v_balance FROM cards c\n"
     "     WHERE c.id = p_card AND c.user_id = p_user;\n"
     "    IF NOT FOUND THEN\n"
     "        RETURN QUERY SELECT 'not_found'::text, NULL::bigint, NULL::bigint, 0::bigint,\n"
     "            0::bigint, 0::bigint, 0::bigint, customer_id, customer_created;\n"
     "        RETURN;\n"
     "    END IF;\n"
     "    SELECT COALESCE(sum(l.amount_minor)\n"
     "               FILTER (WHERE l.created_at > now() - interval '24 hours'), 0),\n"
     "           COALESCE(sum(l.amount_minor)\n"
     "               FILTER (WHERE l.created_at > now() - interval '720 hours'), 0),\n"
     "           COALESCE(sum(l.amount_minor), 0)\n"
     "      INTO day_minor, month_minor, year_minor\n"
     "      FROM loads l\n"
     "     WHERE l.user_id = p_user AND l.status IN ('pending', 'succeeded', 'unknown')\n"
     "       AND l.created_at > now() - interval '8760 hours';\n"
     "    SELECT COALESCE(sum(l.amount_minor), 0) INTO v_inflight FROM loads l\n"
     "     WHERE l.card_id = p_card AND l.status IN ('pending', 'unknown');\n"
     "    card_minor := v_balance + v_inflight;\n"
     "    IF day_minor + p_amount > p_limit_day OR month_minor + p_amount > p_limit_month\n"
     "       OR year_minor + p_amount > p_limit_year\n"
     "       OR card_minor + p_amount > p_limit_balance THEN\n"
     "        RETURN QUERY SELECT 'limit'::text, NULL::bigint, NULL::bigint, day_minor,\n"
     "            month_minor, year_minor, card_minor, customer_id, customer_created;\n"
     "        RETURN;\n"
     "    END IF;\n"
     "    INSERT INTO loads (card_id, user_id, amount_minor, status, order_id, idempotency_key)\n"
     "    VALUES (p_card, p_user, p_amount, 'pending', p_order, p_idem)\n"
     "    RETURNING id, created_at INTO v_id, v_created;\n"
     "    IF p_idem IS NOT NULL THEN\n"
     "        UPDATE idempotency_keys k SET load_id = v_id, updated_at = now()\n"
     "         WHERE k.user_id = p_user AND k.key = p_idem;\n"
     "    END IF;\n"
     "    RETURN QUERY SELECT 'ok'::text, v_id,\n"
     "        (extract(epoch FROM v_created) * 1000)::bigint, day_minor, month_minor,\n"
     "        year_minor, card_minor, customer_id, customer_created;\n"
     "END\n"
     "$f$;\n"

     /* lim_load_finish: move an in-flight load to its outcome, crediting the card in the same
      * transaction when it succeeded. Only a load still pending or unknown changes, so a
      * second finish (a retry, reconciliation racing the request, two reconcilers) credits
      * nothing: 'done' says this call made the change, 'already' returns the load as it was.
      * An 'unknown' outcome keeps the load in flight for reconciliation. */
     "CREATE FUNCTION lim_load_finish(p_load bigint, p_status text, p_txn text, p_code text,\n"
     "    p_text text)\n"
     "RETURNS TABLE (outcome text, balance_minor bigint, id bigint, card_id bigint,\n"
     "    user_id bigint, amount_minor bigint, status text, order_id text,\n"
     "    braintree_transaction_id text, error_code text, error_text text, created_ms bigint)\n"
     "LANGUAGE plpgsql AS $f$\n"
     "DECLARE\n"
     "    v loads%ROWTYPE;\n"
     "    v_outcome text := 'done';\n"
     "    v_balance bigint;\n"
     "BEGIN\n"
     "    IF p_status NOT IN ('succeeded', 'declined', 'failed', 'unknown') THEN\n"
     "        RAISE EXCEPTION 'lim_load_finish: bad status %', p_status\n"
     "            USING ERRCODE = 'invalid_parameter_value';\n"
     "    END IF;\n"
     "    UPDATE loads l SET status = p_status,\n"
     "           braintree_transaction_id = COALESCE(p_txn, l.braintree_transaction_id),\n"
     "           error_code = p_code, error_text = p_text\n"
     "     WHERE l.id = p_load AND l.status IN ('pending', 'unknown')\n"
     "    RETURNING l.* INTO v;\n"
     "    IF NOT FOUND THEN\n"
     "        SELECT l.* INTO v FROM loads l WHERE l.id = p_load;\n"
     "        IF NOT FOUND THEN\n"
     "            RETURN;\n"
     "        END IF;\n"
     "        v_outcome := 'already';\n"
     "    ELSIF p_status = 'succeeded' THEN\n"
     "        UPDATE cards c SET balance_minor = c.balance_minor + v.amount_minor\n"
     "         WHERE c.id = v.card_id RETURNING c.balance_minor INTO v_balance;\n"
     "    END IF;\n"
     "    IF v_balance IS NULL THEN\n"
     "        SELECT c.balance_minor INTO v_balance FROM cards c WHERE c.id = v.card_id;\n"
     "    END IF;\n"
     "    RETURN QUERY SELECT v_outcome, v_balance, v.id, v.card_id, v.user_id,\n"
     "        v.amount_minor, v.status, v.order_id, COALESCE(v.braintree_transaction_id, ''),\n"
     "        COALESCE(v.error_code, ''), COALESCE(v.error_text, ''),\n"
     "        (extract(epoch FROM v.created_at) * 1000)::bigint;\n"
     "END\n"
     "$f$;\n"

     /* lim_idem_begin: claim an Idempotency-Key for a request (reliability-notes §1.4).
      * 'new': this request owns the key now (inserted, or taken over from an attempt that
      * died before creating a load); 'reused': the key belongs to a different request (422);
      * 'replay': the stored final response; 'in_use': the first request is still running
      * (409); 'load': the first request created a load and answered (202) or died, or its
      * load is already settled (by reconciliation, after the first request's process died):
      * answer from the load as it is now. */
     "CREATE FUNCTION lim_idem_begin(p_user bigint, p_key text, p_fp bytea, p_stale_ms bigint)\n"
     "RETURNS TABLE (state text, response_status integer, response_body text, load_id bigint)\n"
     "LANGUAGE plpgsql AS $f$\n"
     "DECLARE\n"
     "    v idempotency_keys%ROWTYPE;\n"
     "BEGIN\n"
     "    INSERT INTO idempotency_keys AS k (user_id, key, request_fingerprint)\n"
     "    VALUES (p_user, p_key, p_fp) ON CONFLICT DO NOTHING;\n"
     "    IF FOUND THEN\n"
     "        RETURN QUERY SELECT 'new'::text, NULL::integer, NULL::text, NULL::bigint;\n"
     "        RETURN;\n"
     "    END IF;\n"
     "    SELECT k.* INTO v FROM idempotency_keys k\n"
     "     WHERE k.user_id = p_user AND k.key = p_key FOR UPDATE;\n"
     "    IF v.request_fingerprint <> p_fp THEN\n"
     "        RETURN QUERY SELECT 'reused'::text, NULL::integer, NULL::text, NULL::bigint;\n"
     "    ELSIF v.status = 'done' THEN\n"
     "        RETURN QUERY SELECT 'replay'::text, v.response_status, v.response_body, v.load_id;\n"
     "    ELSIF v.locked_at IS NOT NULL\n"
     "          AND v.locked_at > now() - p_stale_ms * interval '1 millisecond'\n"
     "          AND (v.load_id IS NULL OR EXISTS (SELECT 1 FROM loads l WHERE l.id = v.load_id\n"
     "               AND l.status IN ('pending', 'unknown'))) THEN\n"
     "        RETURN QUERY SELECT 'in_use'::text, NULL::integer, NULL::text, v.load_id;\n"
     "    ELSIF v.load_id IS NOT NULL THEN\n"
     "        RETURN QUERY SELECT 'load'::text, NULL::integer, NULL::text, v.load_id;\n"
     "    ELSE\n"
     "        UPDATE idempotency_keys k SET locked_at = now(), updated_at = now()\n"
     "         WHERE k.user_id = p_user AND k.key = p_key;\n"
     "        RETURN QUERY SELECT 'new'::text, NULL::integer, NULL::text, NULL::bigint;\n"
     "    END IF;\n"
     "END\n"
     "$f$;\n"},

    /* While the first request's claim is fresh it owns the key, whatever its load's state: a
     * retry that came between the load's settling and the stored answer used to build its own
     * answer from the load and store it, so a later replay could differ from the first 200
     * (found by the fault-injection runner). 'load' is now for released (202) or stale claims. */
    {3, "an Idempotency-Key is in use while its claim is fresh",
     "CREATE OR REPLACE FUNCTION lim_idem_begin(p_user bigint, p_key text, p_fp bytea,\n"
     "    p_stale_ms bigint)\n"
     "RETURNS TABLE (state text, response_status integer, response_body text, load_id bigint)\n"
     "LANGUAGE plpgsql AS $f$\n"
     "DECLARE\n"
     "    v idempotency_keys%ROWTYPE;\n"
     "BEGIN\n"
     "    INSERT INTO idempotency_keys AS k (user_id, key, request_fingerprint)\n"
     "    VALUES (p_user, p_key, p_fp) ON CONFLICT DO NOTHING;\n"
     "    IF FOUND THEN\n"
     "        RETURN QUERY SELECT 'new'::text, NULL::integer, NULL::text, NULL::bigint;\n"
     "        RETURN;\n"
     "    END IF;\n"
     "    SELECT k.* INTO v FROM idempotency_keys k\n"
     "     WHERE k.user_id = p_user AND k.key = p_key FOR UPDATE;\n"
     "    IF v.request_fingerprint <> p_fp THEN\n"
     "        RETURN QUERY SELECT 'reused'::text, NULL::integer, NULL::text, NULL::bigint;\n"
     "    ELSIF v.status = 'done' THEN\n"
     "        RETURN QUERY SELECT 'replay'::text, v.response_status, v.response_body, v.load_id;\n"
     "    ELSIF v.locked_at IS NOT NULL\n"
     "          AND v.locked_at > now() - p_stale_ms * interval '1 millisecond' THEN\n"
     "        RETURN QUERY SELECT 'in_use'::text, NULL::integer, NULL::text, v.load_id;\n"
     "    ELSIF v.load_id IS NOT NULL THEN\n"
     "        RETURN QUERY SELECT 'load'::text, NULL::integer, NULL::text, v.load_id;\n"
     "    ELSE\n"
     "        UPDATE idempotency_keys k SET locked_at = now(), updated_at = now()\n"
     "         WHERE k.user_id = p_user AND k.key = p_key;\n"
     "        RETURN QUERY SELECT 'new'::text, NULL::integer, NULL::text, NULL::bigint;\n"
     "    END IF;\n"
     "END\n"
     "$f$;\n"},

    /* A load re-checks its API key in its own first transaction (auth.h): a revoked key can
     * never start a load, even while a server still has it cached, and a server whose cache
     * entry has expired needs no separate lookup. p_key NULL skips the check (callers that
     * know no key). The rest is migration 2's function unchanged. The old nine-argument
     * function goes: a server of an older build still calls this one (p_key defaults to NULL). */
    {4, "a load re-checks its API key in its own transaction",
     "DROP FUNCTION lim_load_begin(bigint, bigint, bigint, text, text, bigint, bigint, bigint,\n"
     "    bigint);\n"
     "CREATE FUNCTION lim_load_begin(p_user bigint, p_card bigint, p_amount bigint,\n"
     "    p_order text, p_idem text, p_limit_day bigint, p_limit_month bigint,\n"
     "    p_limit_year bigint, p_limit_balance bigint, p_key bigint DEFAULT NULL)\n"
     "RETURNS TABLE (outcome text, load_id bigint, created_ms bigint, day_minor bigint,\n"
     "    month_minor bigint, year_minor bigint, card_minor bigint, customer_id text,\n"
     "    customer_created boolean)\n"
     "LANGUAGE plpgsql AS $f$\n"
     "DECLARE\n"
     "    v_balance bigint;\n"
     "    v_inflight bigint;\n"
     "    v_id bigint;\n"
     "    v_created timestamptz;\n"
     "BEGIN\n"
     "    IF p_key IS NOT NULL AND NOT EXISTS (SELECT 1 FROM api_keys k WHERE k.id = p_key\n"
     "           AND k.user_id = p_user AND k.revoked_at IS NULL) THEN\n"
     "        RETURN QUERY SELECT 'bad_key'::text, NULL::bigint, NULL::bigint, 0::bigint,\n"
     "            0::bigint, 0::bigint, 0::bigint, NULL::text, false;\n"
     "        RETURN;\n"
     "    END IF;\n"
     "    SELECT u.braintree_customer_id, u.braintree_customer_created\n"
     "      INTO customer_id, customer_created FROM users u WHERE u.id = p_user FOR UPDATE;\n"
     "    SELECT c.balance_minor INTO v_balance FROM cards c\n"
     "     WHERE c.id = p_card AND c.user_id = p_user;\n"
     "    IF NOT FOUND THEN\n"
     "        RETURN QUERY SELECT 'not_found'::text, NULL::bigint, NULL::bigint, 0::bigint,\n"
     "            0::bigint, 0::bigint, 0::bigint, customer_id, customer_created;\n"
     "        RETURN;\n"
     "    END IF;\n"
     "    SELECT COALESCE(sum(l.amount_minor)\n"
     "               FILTER (WHERE l.created_at > now() - interval '24 hours'), 0),\n"
     "           COALESCE(sum(l.amount_minor)\n"
     "               FILTER (WHERE l.created_at > now() - interval '720 hours'), 0),\n"
     "           COALESCE(sum(l.amount_minor), 0)\n"
     "      INTO day_minor, month_minor, year_minor\n"
     "      FROM loads l\n"
     "     WHERE l.user_id = p_user AND l.status IN ('pending', 'succeeded', 'unknown')\n"
     "       AND l.created_at > now() - interval '8760 hours';\n"
     "    SELECT COALESCE(sum(l.amount_minor), 0) INTO v_inflight FROM loads l\n"
     "     WHERE l.card_id = p_card AND l.status IN ('pending', 'unknown');\n"
     "    card_minor := v_balance + v_inflight;\n"
     "    IF day_minor + p_amount > p_limit_day OR month_minor + p_amount > p_limit_month\n"
     "       OR year_minor + p_amount > p_limit_year\n"
     "       OR card_minor + p_amount > p_limit_balance THEN\n"
     "        RETURN QUERY SELECT 'limit'::text, NULL::bigint, NULL::bigint, day_minor,\n"
     "            month_minor, year_minor, card_minor, customer_id, customer_created;\n"
     "        RETURN;\n"
     "    END IF;\n"
     "    INSERT INTO loads (card_id, user_id, amount_minor, status, order_id, idempotency_key)\n"
     "    VALUES (p_card, p_user, p_amount, 'pending', p_order, p_idem)\n"
     "    RETURNING id, created_at INTO v_id, v_created;\n"
     "    IF p_idem IS NOT NULL THEN\n"
     "        UPDATE idempotency_keys k SET load_id = v_id, updated_at = now()\n"
     "         WHERE k.user_id = p_user AND k.key = p_idem;\n"
     "    END IF;\n"
     "    RETURN QUERY SELECT 'ok'::text, v_id,\n"
     "        (extract(epoch FROM v_created) * 1000)::bigint, day_minor, month_minor,\n"
     "        year_minor, card_minor, customer_id, customer_created;\n"
     "END\n"
     "$f$;\n"},

    /* lim_load_finish found its load with "id = p_load AND status IN ('pending', 'unknown')".
     * That condition implies the predicate of the partial index loads_card_inflight_idx, and
     * while few loads are in flight ANALYZE sizes that index at about nothing, so the planner
     * read the load through it: a scan of every in-flight load for each finish. With 1,000
     * loads in flight (a slow gateway) that was ~500 buffers per finish instead of ~20; after
     * an outage that leaves thousands unknown, every finish and every reconciliation would
     * have paid for all of them (bench/RESULTS.md, session 4). The load is now read and locked
     * by its primary key alone and its status tested here; the behaviour is unchanged. */
    {5, "a load's outcome finds the load by its primary key",
     "CREATE OR REPLACE FUNCTION lim_load_finish(p_load bigint, p_status text, p_txn text,\n"
     "    p_code text, p_text text)\n"
     "RETURNS TABLE (outcome text, balance_minor bigint, id bigint, card_id bigint,\n"
     "    user_id bigint, amount_minor bigint, status text, order_id text,\n"
     "    braintree_transaction_id text, error_code text, error_text text, created_ms bigint)\n"
     "LANGUAGE plpgsql AS $f$\n"
     "DECLARE\n"
     "    v loads%ROWTYPE;\n"
     "    v_outcome text := 'done';\n"
     "    v_balance bigint;\n"
     "BEGIN\n"
     "    IF p_status NOT IN ('succeeded', 'declined', 'failed', 'unknown') THEN\n"
     "        RAISE EXCEPTION 'lim_load_finish: bad status %', p_status\n"
     "            USING ERRCODE = 'invalid_parameter_value';\n"
     "    END IF;\n"
     /* The row lock orders a second finish (a retry, reconciliation racing the request) after
      * this one; it then reads the settled status and changes nothing. */
     "    SELECT l.* INTO v FROM loads l WHERE l.id = p_load FOR UPDATE;\n"
     "    IF NOT FOUND THEN\n"
     "        RETURN;\n"
     "    END IF;\n"
     "    IF v.status NOT IN ('pending', 'unknown') THEN\n"
     "        v_outcome := 'already';\n"
     "    ELSE\n"
     "        UPDATE loads l SET status = p_status,\n"
     "               braintree_transaction_id = COALESCE(p_txn, l.braintree_transaction_id),\n"
     "               error_code = p_code, error_text = p_text\n"
     "         WHERE l.id = p_load\n"
     "        RETURNING l.* INTO v;\n"
     "        IF p_status = 'succeeded' THEN\n"
     "            UPDATE cards c SET balance_minor = c.balance_minor + v.amount_minor\n"
     "             WHERE c.id = v.card_id RETURNING c.balance_minor INTO v_balance;\n"
     "        END IF;\n"
     "    END IF;\n"
     "    IF v_balance IS NULL THEN\n"
     "        SELECT c.balance_minor INTO v_balance FROM cards c WHERE c.id = v.card_id;\n"
     "    END IF;\n"
     "    RETURN QUERY SELECT v_outcome, v_balance, v.id, v.card_id, v.user_id,\n"
     "        v.amount_minor, v.status, v.order_id, COALESCE(v.braintree_transaction_id, ''),\n"
     "        COALESCE(v.error_code, ''), COALESCE(v.error_text, ''),\n"
     "        (extract(epoch FROM v.created_at) * 1000)::bigint;\n"
     "END\n"
     "$f$;\n"},
};

/* The build's schema version is the last migration: a new migration without the bump (or the
 * reverse) does not compile. */
_Static_assert(LIM_ARRAY_SIZE(migrations) == LIM_SCHEMA_VERSION,
               "LIM_SCHEMA_VERSION must be the number of the last migration");

const lim_migration_t *lim_migrations(size_t *n)
{
    *n = LIM_ARRAY_SIZE(migrations);
    return migrations;
}
