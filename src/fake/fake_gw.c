/*
 * fake_gw.c: the Braintree resources of the fake gateway: transactions (sale, credit, find,
 * void, submit_for_settlement, refund, the sandbox settlement helpers, two-phase search),
 * customers and client tokens, with the sandbox's test amounts and nonces
 * (braintree-gateway.md §3-§7).
 *
 * Every call writes its whole XML answer into fk->out and returns the HTTP status; the HTTP
 * side (fake_bt.c) compresses and sends it, or drops it for a fault.
 *
 * Choices where the spec is silent (also in the report and fake_bt.h):
 *   - fake-processor-declined-*-nonce declines a sale with 2000 "Do Not Honor" and
 *     fake-processor-failure-jcb-nonce fails it with 3000 (the sandbox only fails card
 *     *verification* with them; declining sales makes them useful to client tests);
 *   - fake-single-use-<anything> is a nonce that works once, then gives 91564;
 *   - an unknown customer_id is 91510 (CustomerIdIsInvalid); a customer without a card used
 *     alone is 91511; payment_method_token is always 91518 (there is no vault);
 *   - any merchant_account_id is accepted and echoed (default: the merchant id);
 *   - unknown top-level <transaction> keys are 403 with an empty body, as the gateway does;
 *   - an api_request_key is remembered only once a transaction exists (a validation failure
 *     can be retried with the same key);
 *   - amounts of more than FK_AMOUNT_MAX_DIGITS integer digits are 81528.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "fake_int.h"
#include "lim/json.h"
#include "lim/money.h"

/* ---- static tables ------------------------------------------------------------------------- */

static const char *const status_names[FK_ST__COUNT] = {
    "authorized",
    "submitted_for_settlement",
    "settling",
    "settled",
    "settlement_confirmed",
    "settlement_declined",
    "settlement_pending",
    "voided",
    "processor_declined",
    "gateway_rejected",
    "failed",
};

const char *fk_status_name(int st)
{
    return st >= 0 && st < FK_ST__COUNT ? status_names[st] : "unknown";
}

int fk_status_parse(const char *s, size_t len)
{
    for (int i = 0; i < FK_ST__COUNT; i++)
        if (strlen(status_names[i]) == len && memcmp(status_names[i], s, len) == 0)
            return i;
    return -1;
}

typedef struct card_s {
    const char *key;   /* as it appears in nonce names */
    const char *type;  /* card-type */
    const char *bin;   /* first six digits */
    const char *last4; /* last four */
    const char *logo;  /* image-url name */
} card_t;

enum { CARD_VISA = 0 };

static const card_t cards[] = {
    {"visa", "Visa", "411111", "1111", "visa"},
    {"mastercard", "MasterCard", "555555", "4444", "mastercard"},
    {"amex", "American Express", "378282", "0005", "american_express"},
    {"discover", "Discover", "601100", "0009", "discover"},
    {"jcb", "JCB", "353011", "0000", "jcb"},
    {"maestro", "Maestro", "630400", "0000", "maestro"},
    {"dinersclub", "Diners Club", "362596", "0004", "diners_club"},
    {"unionpay", "UnionPay", "624303", "0001", "unionpay"},
};

/* §5.5: the 2000-class processor responses (index = code - 2000), 1 = hard decline. */
typedef struct decline_s {
    const char *text;
    uint8_t hard;
} decline_t;

static const decline_t declines[] = {
    {"Do Not Honor", 0},
    {"Insufficient Funds", 0},
    {"Limit Exceeded", 0},
    {"Cardholder's Activity Limit Exceeded", 0},
    {"Expired Card", 1},
    {"Invalid Credit Card Number", 1},
    {"Invalid Expiration Date", 1},
    {"No Account", 1},
    {"Card Account Length Error", 1},
    {"No Such Issuer", 1},
    {"Card Issuer Declined CVV", 1},
    {"Voice Authorization Required", 1},
    {"Processor Declined - Possible Lost Card", 1},
    {"Processor Declined - Possible Stolen Card", 1},
    {"Processor Declined - Fraud Suspected", 1},
    {"Transaction Not Allowed", 1},
    {"Duplicate Transaction", 0},
    {"Cardholder Stopped Billing", 1},
    {"Cardholder Stopped All Billing", 1},
    {"Invalid Transaction", 1},
    {"Violation", 1},
    {"Security Violation", 1},
    {"Declined - Updated Cardholder Available", 1},
    {"Processor Does Not Support This Feature", 1},
    {"Card Type Not Enabled", 1},
    {"Set Up Error - Merchant", 0},
    {"Invalid Merchant ID", 0},
    {"Set Up Error - Amount", 1},
    {"Set Up Error - Hierarchy", 1},
    {"Set Up Error - Card", 1},
    {"Set Up Error - Terminal", 1},
    {"Encryption Error", 1},
    {"Surcharge Not Permitted", 1},
    {"Inconsistent Data", 1},
    {"No Action Taken", 0},
    {"Partial Approval For Amount In Group III Version", 0},
    {"Authorization could not be found", 1},
    {"Already Reversed", 1},
    {"Processor Declined", 0},
    {"Invalid Authorization Code", 1},
    {"Invalid Store", 0},
    {"Declined - Call For Approval", 1},
    {"Invalid Client ID", 0},
    {"Error - Do Not Retry, Call Issuer", 1},
    {"Declined - Call Issuer", 1},
    {"Invalid Merchant Number", 1},
    {"Declined", 0},
    {"Call Issuer. Pick Up Card", 1},
    {"Invalid Amount", 0},
    {"Invalid SKU Number", 1},
    {"Invalid Credit Plan", 1},
    {"Credit Card Number does not match method of payment", 1},
    {"Invalid level III Purchase", 1},
    {"Card reported as lost or stolen", 1},
    {"Reversal amount does not match authorization amount", 1},
    {"Invalid Transaction Division Number", 1},
    {"Transaction amount exceeds the transaction division limit", 1},
    {"Issuer or Cardholder has put a restriction on the card", 0},
    {"Merchant not Mastercard SecureCode enabled", 1},
    {"Address Verification Failed", 1},
    {"Address Verification and Card Security Code Failed", 1},
    {"Invalid Transaction Data", 1},
    {"Invalid Tax Amount", 0},
    {"PayPal Business Account preference resulted in the transaction failing", 1},
    {"Invalid Currency Code", 1},
    {"Refund Time Limit Exceeded", 1},
    {"PayPal Business Account Restricted", 1},
    {"Authorization Expired", 1},
    {"PayPal Business Account Locked or Closed", 1},
    {"PayPal Blocking Duplicate Order IDs", 1},
    {"PayPal Buyer Revoked Pre-Approved Payment Authorization", 1},
    {"PayPal Payee Account Invalid Or Does Not Have a Confirmed Email", 1},
    {"PayPal Payee Email Incorrectly Formatted", 1},
    {"PayPal Validation Error", 1},
    {"Funding Instrument In The PayPal Account Was Declined By The Processor Or Bank, Or It "
     "Can't Be Used For This Payment",
     1},
    {"Payer Account Is Locked Or Closed", 1},
    {"Payer Cannot Pay For This Transaction With PayPal", 1},
    {"Transaction Refused Due To PayPal Risk Model", 1},
    {"Invalid Secure Payment Data", 0},
    {"PayPal Merchant Account Configuration Error", 1},
    {"Invalid user credentials", 0},
    {"PayPal pending payments are not supported", 1},
    {"PayPal Domestic Transaction Required", 1},
    {"PayPal Phone Number Required", 1},
    {"PayPal Tax Info Required", 1},
    {"PayPal Payee Blocked Transaction", 1},
    {"PayPal Transaction Limit Exceeded", 1},
    {"PayPal reference transactions not enabled for your account", 1},
    {"Currency not enabled for your PayPal seller account", 1},
    {"PayPal payee email permission denied for this request", 1},
    {"PayPal or Venmo account not configured to refund more than settled amount", 1},
    {"Currency of this transaction must match currency of your PayPal account", 1},
    {"No Data Found - Try Another Verification Method", 0},
    {"PayPal payment method is invalid", 1},
    {"PayPal payment has already been completed", 1},
    {"PayPal refund is not allowed after partial refund", 1},
    {"PayPal buyer account can't be the same as the seller account", 1},
    {"PayPal authorization amount limit exceeded", 1},
    {"PayPal authorization count limit exceeded", 1},
    {"Cardholder Authentication Required", 0},
    {"PayPal channel initiated billing not enabled for your account", 1},
    {"Additional authorization required", 0},
    {"Incorrect PIN", 0},
    {"PIN try exceeded", 0},
    {"Offline Issuer Declined", 0},
    {"Cannot Authorize at this time (Life cycle)", 0},
    {"Cannot Authorize at this time (Policy)", 0},
    {"Card Not Activated", 1},
    {"Closed Card", 1},
};

/* 2000 through 2108; 2109-2999 are "Processor Declined" like 2038. */
_Static_assert(LIM_ARRAY_SIZE(declines) == 109, "one entry per code from 2000 to 2108");
#define DECLINE_GENERIC 38

#define FAILED_TEXT "Processor Network Unavailable - Try Again"

/* The keys a <transaction> create may carry at its top level (Transaction.create_signature
 * of the SDKs); anything else is 403, as the gateway answers malformed parameters. */
static const char *const sale_keys[] = {
    "amount",
    "api_request_key",
    "apple_pay_card",
    "billing",
    "billing_address_id",
    "channel",
    "credit_card",
    "currency_iso_code",
    "custom_fields",
    "customer",
    "customer_id",
    "descriptor",
    "device_data",
    "device_session_id",
    "discount_amount",
    "exchange_rate_quote_id",
    "external_vault",
    "foreign_retailer",
    "fraud_merchant_id",
    "google_pay_card",
    "industry",
    "installments",
    "line_items",
    "merchant_account_id",
    "options",
    "order_id",
    "payment_facilitator",
    "payment_method_nonce",
    "payment_method_token",
    "paypal_account",
    "product_sku",
    "purchase_order_number",
    "recurring",
    "risk_data",
    "sca_exemption",
    "service_fee_amount",
    "shared_billing_address_id",
    "shared_customer_id",
    "shared_payment_method_nonce",
    "shared_payment_method_token",
    "shared_shipping_address_id",
    "shipping",
    "shipping_address_id",
    "shipping_amount",
    "ships_from_postal_code",
    "tax_amount",
    "tax_exempt",
    "three_d_secure_authentication_id",
    "three_d_secure_pass_thru",
    "three_d_secure_token",
    "transaction_source",
    "transfer",
    "type",
    "venmo_sdk_payment_method_code",
};

/* ---- state --------------------------------------------------------------------------------- */

void fk_state_init(fk_state_t *s)
{
    memset(s, 0, sizeof(*s));
}

void fk_state_free(fk_state_t *s)
{
    fk_map_free(&s->txns);
    fk_map_free(&s->orders);
    fk_map_free(&s->customers);
    fk_map_free(&s->keys);
    fk_map_free(&s->dups);
    fk_map_free(&s->used_nonces);
    free(s->list);
    s->list = NULL;
    s->n_list = s->cap_list = 0;
    fk_arena_free(&s->arena);
}

void fk_gw_reset(lim_fake_bt_t *fk)
{
    uint64_t t = fk->st.next_txn, c = fk->st.next_customer;

    fk_state_free(&fk->st);
    fk_state_init(&fk->st);
    /* Ids never repeat within a process, even across resets. */
    fk->st.next_txn = t;
    fk->st.next_customer = c;
}

static int64_t now_ms(void)
{
    uv_timeval64_t tv;

    if (uv_gettimeofday(&tv) != 0)
        return (int64_t) time(NULL) * 1000;
    return tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* ---- validation errors --------------------------------------------------------------------- */

#define MAX_ERRS 16

typedef struct err_s {
    const char *sub; /* NULL: on the request's object; else a nested object ("credit-card") */
    const char *code;
    const char *attr;
    const char *msg;
} err_t;

typedef struct errs_s {
    const char *object; /* "transaction", "customer", "client-token" */
    err_t e[MAX_ERRS];
    unsigned n;
} errs_t;

static void err_add(errs_t *errs, const char *sub, const char *code, const char *attr,
                    const char *msg)
{
    if (errs->n < MAX_ERRS)
        errs->e[errs->n++] = (err_t){sub, code, attr, msg};
}

static void write_error_list(fk_xw_t *w, const errs_t *errs, const char *sub)
{
    int any = 0;

    for (unsigned i = 0; i < errs->n; i++) {
        const err_t *e = &errs->e[i];
        if ((sub == NULL) != (e->sub == NULL) || (sub != NULL && strcmp(sub, e->sub) != 0))
            continue;
        if (!any)
            xw_lit(w, "<errors type=\"array\">");
        any = 1;
        xw_lit(w, "<error><code>");
        xw_lit(w, e->code);
        xw_lit(w, "</code><attribute type=\"symbol\">");
        xw_lit(w, e->attr);
        xw_lit(w, "</attribute>");
        xw_str(w, "message", e->msg);
        xw_lit(w, "</error>");
    }
    if (any)
        xw_lit(w, "</errors>");
    else
        xw_empty_array(w, "errors");
}

static void write_params(fk_xw_t *w, const fk_doc_t *doc)
{
    int32_t root = fk_doc_root(doc);

    xw_open(w, "params");
    if (root >= 0)
        xw_doc(w, doc, root);
    xw_close(w, "params");
}

/* 422 <api-error-response> with validation errors and no transaction. */
static int write_validation(lim_fake_bt_t *fk, fk_xw_t *w, const errs_t *errs, const fk_doc_t *doc)
{
    xw_lit(w, "<api-error-response><errors><errors type=\"array\"/>");
    xw_open(w, errs->object);
    write_error_list(w, errs, NULL);
    for (unsigned i = 0; i < errs->n; i++) {
        const char *sub = errs->e[i].sub;
        int seen = 0;
        if (sub == NULL)
            continue;
        for (unsigned j = 0; j < i && !seen; j++)
            seen = errs->e[j].sub != NULL && strcmp(errs->e[j].sub, sub) == 0;
        if (seen)
            continue;
        xw_open(w, sub);
        write_error_list(w, errs, sub);
        xw_close(w, sub);
    }
    xw_close(w, errs->object);
    xw_lit(w, "</errors>");
    write_params(w, doc);
    xw_lit(w, "<message>");
    for (unsigned i = 0; i < errs->n; i++) {
        if (i > 0)
            xw_lit(w, "\n");
        xw_esc(w, errs->e[i].msg, strlen(errs->e[i].msg));
    }
    xw_lit(w, "</message></api-error-response>");
    fk->stats.validation++;
    return 422;
}

/* 422 with an empty error list and a message (operations the gateway refuses outright). */
static int write_refusal(fk_xw_t *w, const char *message)
{
    xw_lit(w, "<api-error-response><errors><errors type=\"array\"/></errors>");
    xw_str(w, "message", message);
    xw_lit(w, "</api-error-response>");
    return 422;
}

/* ---- writing a transaction ----------------------------------------------------------------- */

/* The static runs of the answers, precompressed once (fk_gz_assemble): a transaction is about
 * 4 KB of XML of which these are most. */
#define FRAGS(X)                                                                                   \
    X(F_DECL, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n")                                      \
    X(F_TYPE_END, "</type><currency-iso-code>USD</currency-iso-code><amount>")                     \
    X(F_MAI_END, "</merchant-account-id><sub-merchant-account-id nil=\"true\"/>"                   \
                 "<master-merchant-account-id nil=\"true\"/>")                                     \
    X(F_CREATED, "<created-at type=\"datetime\">")                                                 \
    X(F_UPDATED, "</created-at><updated-at type=\"datetime\">")                                    \
    X(F_CUSTOMER_NONE, "</updated-at><customer><id nil=\"true\"/><first-name nil=\"true\"/>"       \
                       "<last-name nil=\"true\"/><company nil=\"true\"/><email nil=\"true\"/>"     \
                       "<phone nil=\"true\"/><fax nil=\"true\"/><website nil=\"true\"/>"           \
                       "</customer>")                                                              \
    X(F_CUSTOMER_END, "<fax nil=\"true\"/><website nil=\"true\"/></customer>")                     \
    X(F_BILLING, "<billing><id nil=\"true\"/><postal-code nil=\"true\"/>"                          \
                 "<street-address nil=\"true\"/><country-name nil=\"true\"/></billing>"            \
                 "<shipping><id nil=\"true\"/></shipping>")                                        \
    X(F_NO_REFUNDS, "<refund-id nil=\"true\"/><refund-ids type=\"array\"/>")                       \
    X(F_PARTIAL, "<partial-settlement-transaction-ids type=\"array\"/>"                            \
                 "<authorized-transaction-id nil=\"true\"/>")                                      \
    X(F_AVS_I, "<avs-error-response-code nil=\"true\"/>"                                           \
               "<avs-postal-code-response-code>I</avs-postal-code-response-code>"                  \
               "<avs-street-address-response-code>I</avs-street-address-response-code>"            \
               "<cvv-response-code>I</cvv-response-code>")                                         \
    X(F_AVS_NIL,                                                                                   \
      "<avs-error-response-code nil=\"true\"/>"                                                    \
      "<avs-postal-code-response-code nil=\"true\"/>"                                              \
      "<avs-street-address-response-code nil=\"true\"/><cvv-response-code nil=\"true\"/>")         \
    X(F_APPROVED, "<processor-response-code>1000</processor-response-code>"                        \
                  "<processor-response-text>Approved</processor-response-text>"                    \
                  "<processor-response-type>approved</processor-response-type>"                    \
                  "<additional-processor-response nil=\"true\"/>")                                 \
    X(F_NO_PROCESSOR, "<processor-response-code></processor-response-code>"                        \
                      "<processor-response-text></processor-response-text>"                        \
                      "<processor-response-type nil=\"true\"/>")                                   \
    X(F_NET, "<network-response-code>XX</network-response-code>"                                   \
             "<network-response-text>sample network response text</network-response-text>"         \
             "<network-transaction-id>0200")                                                       \
    X(F_NET_NIL, "<network-response-code nil=\"true\"/><network-response-text nil=\"true\"/>"      \
                 "<network-transaction-id nil=\"true\"/>")                                         \
    X(F_CARD_OPEN, "<voice-referral-number nil=\"true\"/><purchase-order-number nil=\"true\"/>"    \
                   "<tax-amount nil=\"true\"/><tax-exempt type=\"boolean\">false</tax-exempt>"     \
                   "<credit-card>")                                                                \
    X(F_CARD_MID,                                                                                  \
      "</card-type><expiration-month>12</expiration-month>"                                        \
      "<expiration-year>2030</expiration-year><customer-location>US</customer-location>"           \
      "<cardholder-name nil=\"true\"/>"                                                            \
      "<image-url>https://assets.braintreegateway.com/payment_method_logo/")                       \
    X(F_CARD_END, ".png?environment=sandbox</image-url><prepaid>Unknown</prepaid>"                 \
                  "<healthcare>Unknown</healthcare><debit>Unknown</debit>"                         \
                  "<durbin-regulated>Unknown</durbin-regulated><commercial>Unknown</commercial>"   \
                  "<payroll>Unknown</payroll><issuing-bank>Unknown</issuing-bank>"                 \
                  "<country-of-issuance>Unknown</country-of-issuance>"                             \
                  "<venmo-sdk type=\"boolean\">false</venmo-sdk>")                                 \
    X(F_HISTORY, "</credit-card><status-history type=\"array\">")                                  \
    X(F_EVENT_OPEN, "<status-event><timestamp type=\"datetime\">")                                 \
    X(F_EVENT_CLOSE, "</user><transaction-source>api</transaction-source></status-event>")         \
    X(F_TAIL,                                                                                      \
      "</status-history><plan-id nil=\"true\"/><subscription-id nil=\"true\"/>"                    \
      "<subscription><billing-period-end-date nil=\"true\"/>"                                      \
      "<billing-period-start-date nil=\"true\"/></subscription>"                                   \
      "<add-ons type=\"array\"/><discounts type=\"array\"/>"                                       \
      "<descriptor><name nil=\"true\"/><phone nil=\"true\"/><url nil=\"true\"/></descriptor>"      \
      "<recurring type=\"boolean\">false</recurring><channel nil=\"true\"/>"                       \
      "<service-fee-amount nil=\"true\"/><escrow-status nil=\"true\"/>"                            \
      "<disbursement-details><disbursement-date nil=\"true\"/>"                                    \
      "<settlement-amount nil=\"true\"/><settlement-currency-iso-code nil=\"true\"/>"              \
      "<settlement-currency-exchange-rate nil=\"true\"/><funds-held nil=\"true\"/>"                \
      "<success nil=\"true\"/></disbursement-details><disputes type=\"array\"/>"                   \
      "<payment-instrument-type>credit_card</payment-instrument-type>")                            \
    X(F_NO_SETTLEMENT, "<processor-settlement-response-code></processor-settlement-response-code>" \
                       "<processor-settlement-response-text></processor-settlement-response-text>" \
                       "</transaction>")                                                           \
    X(F_ERROR_OPEN, "<api-error-response><errors><errors type=\"array\"/></errors>")

#define FRAG_ENUM(name, text) name,
#define FRAG_DEF(name, text)  {text, sizeof(text) - 1},

enum { FRAGS(FRAG_ENUM) F__COUNT };

const fk_fragdef_t fk_frags[] = {FRAGS(FRAG_DEF)};
const unsigned fk_n_frags = F__COUNT;

static void write_customer_details(lim_fake_bt_t *fk, fk_xw_t *w, const char *customer_id)
{
    const fk_customer_t *c = fk_map_get(&fk->st.customers, customer_id, strlen(customer_id));

    xw_lit(w, "</updated-at><customer>");
    xw_str(w, "id", customer_id);
    xw_str(w, "first-name", c != NULL ? c->first_name : NULL);
    xw_str(w, "last-name", c != NULL ? c->last_name : NULL);
    xw_str(w, "company", c != NULL ? c->company : NULL);
    xw_str(w, "email", c != NULL ? c->email : NULL);
    xw_str(w, "phone", c != NULL ? c->phone : NULL);
    xw_frag(w, F_CUSTOMER_END);
}

/* A card's details, the element names shared by transactions and customers. */
static void write_card(fk_xw_t *w, const card_t *card, const char *token)
{
    xw_str(w, "token", token);
    xw_lit(w, "<bin>");
    xw_lit(w, card->bin);
    xw_lit(w, "</bin><last-4>");
    xw_lit(w, card->last4);
    xw_lit(w, "</last-4><card-type>");
    xw_lit(w, card->type);
    xw_frag(w, F_CARD_MID);
    xw_lit(w, card->logo);
    xw_frag(w, F_CARD_END);
}

static void write_txn(lim_fake_bt_t *fk, fk_xw_t *w, const fk_txn_t *t)
{
    xw_lit(w, "<transaction><id>");
    xw_lit(w, t->id);
    xw_lit(w, "</id><status>");
    xw_lit(w, status_names[t->status]);
    xw_lit(w, t->is_credit ? "</status><type>credit" : "</status><type>sale");
    xw_frag(w, F_TYPE_END);
    xw_amount(w, t->amount_minor);
    xw_lit(w, "</amount><merchant-account-id>");
    xw_esc(w, t->merchant_account_id, strlen(t->merchant_account_id));
    xw_frag(w, F_MAI_END);
    xw_str(w, "order-id", t->order_id);
    xw_frag(w, F_CREATED);
    xw_iso(w, t->created_at);
    xw_frag(w, F_UPDATED);
    xw_iso(w, t->updated_at);
    if (t->customer_id == NULL)
        xw_frag(w, F_CUSTOMER_NONE);
    else
        write_customer_details(fk, w, t->customer_id);
    xw_frag(w, F_BILLING);
    if (t->refunds == NULL) {
        xw_frag(w, F_NO_REFUNDS);
    } else {
        /* Oldest first, as the gateway lists them; the chain is newest first. */
        const fk_txn_t *r[64];
        unsigned n = 0;
        for (const fk_txn_t *x = t->refunds; x != NULL && n < 64; x = x->next_refund)
            r[n++] = x;
        xw_str(w, "refund-id", r[n - 1]->id);
        xw_lit(w, "<refund-ids type=\"array\">");
        while (n > 0)
            xw_str(w, "item", r[--n]->id);
        xw_lit(w, "</refund-ids>");
    }
    xw_str(w, "refunded-transaction-id", t->refunded != NULL ? t->refunded->id : NULL);
    xw_frag(w, F_PARTIAL);
    if (t->status == FK_ST_SETTLED || t->status == FK_ST_SETTLEMENT_CONFIRMED) {
        char batch[64], iso[32];
        fk_time_iso(t->updated_at, iso);
        snprintf(batch, sizeof(batch), "%.10s_%s", iso, "fake");
        xw_str(w, "settlement-batch-id", batch);
    } else {
        xw_nil(w, "settlement-batch-id");
    }
    xw_frag(w, t->proc_code != 0 ? F_AVS_I : F_AVS_NIL);
    xw_str(w, "gateway-rejection-reason", t->rejection);
    if (t->duplicate_of != NULL)
        xw_str(w, "duplicate-of-transaction-id", t->duplicate_of->id);
    xw_str(w, "processor-authorization-code", t->auth_code[0] != '\0' ? t->auth_code : NULL);
    if (t->proc_code == 1000) {
        xw_frag(w, F_APPROVED);
    } else if (t->proc_code == 0) {
        /* Rejected before reaching the processor: no processor response. */
        xw_frag(w, F_NO_PROCESSOR);
        xw_nil(w, "additional-processor-response");
    } else {
        xw_lit(w, "<processor-response-code>");
        xw_u64(w, (uint64_t) t->proc_code);
        xw_lit(w, "</processor-response-code>");
        xw_str(w, "processor-response-text", t->proc_text);
        xw_str(w, "processor-response-type", t->proc_type);
        if (t->proc_code >= 2000) {
            xw_lit(w, "<additional-processor-response>");
            xw_u64(w, (uint64_t) t->proc_code);
            xw_lit(w, " : ");
            xw_esc(w, t->proc_text, strlen(t->proc_text));
            xw_lit(w, "</additional-processor-response>");
        } else {
            xw_nil(w, "additional-processor-response");
        }
    }
    if (t->auth_code[0] != '\0') {
        xw_frag(w, F_NET);
        xw_lit(w, t->id);
        xw_lit(w, "</network-transaction-id>");
    } else {
        xw_frag(w, F_NET_NIL);
    }
    xw_frag(w, F_CARD_OPEN);
    write_card(w, &cards[t->card], NULL);
    xw_frag(w, F_HISTORY);
    for (unsigned i = 0; i < t->n_events; i++) {
        xw_frag(w, F_EVENT_OPEN);
        xw_iso(w, t->events[i].at);
        xw_lit(w, "</timestamp><status>");
        xw_lit(w, status_names[t->events[i].status]);
        xw_lit(w, "</status><amount>");
        xw_amount(w, t->events[i].amount_minor);
        xw_lit(w, "</amount><user>");
        xw_esc(w, fk->public_key, strlen(fk->public_key));
        xw_frag(w, F_EVENT_CLOSE);
    }
    xw_frag(w, F_TAIL);
    if (t->settle_code != 0) {
        xw_lit(w, "<processor-settlement-response-code>");
        xw_u64(w, (uint64_t) t->settle_code);
        xw_lit(w, "</processor-settlement-response-code>");
        xw_str(w, "processor-settlement-response-text",
               t->settle_code == 4001 ? "Settlement Declined" : "Settlement Pending");
        xw_lit(w, "</transaction>");
    } else {
        xw_frag(w, F_NO_SETTLEMENT);
    }
}

static int txn_success(const fk_txn_t *t)
{
    return t->status != FK_ST_PROCESSOR_DECLINED && t->status != FK_ST_GATEWAY_REJECTED &&
           t->status != FK_ST_FAILED;
}

/* The answer to a create: 201 with the transaction, or 422 with it inside an error response. */
static int write_created(lim_fake_bt_t *fk, fk_xw_t *w, const fk_txn_t *t, const fk_doc_t *doc)
{
    char msg[96];
    const char *message;

    if (txn_success(t)) {
        write_txn(fk, w, t);
        return 201;
    }
    if (t->status == FK_ST_GATEWAY_REJECTED) {
        snprintf(msg, sizeof(msg), "Gateway Rejected: %s", t->rejection);
        message = msg;
    } else {
        message = t->proc_text;
    }
    xw_frag(w, F_ERROR_OPEN);
    write_params(w, doc);
    xw_str(w, "message", message);
    write_txn(fk, w, t);
    xw_lit(w, "</api-error-response>");
    return 422;
}

/* ---- nonces and cards ---------------------------------------------------------------------- */

typedef enum nonce_e {
    NONCE_UNKNOWN = 0, /* 91565 */
    NONCE_VALID,
    NONCE_SINGLE_USE,   /* valid once */
    NONCE_CONSUMED,     /* 91564 */
    NONCE_LUHN,         /* 81715 */
    NONCE_REJECT_FRAUD, /* gateway_rejected fraud */
    NONCE_REJECT_RISK,  /* gateway_rejected risk_threshold */
    NONCE_REJECT_TOKEN, /* gateway_rejected token_issuance */
    NONCE_DECLINE,      /* processor_declined 2000 */
    NONCE_FAIL,         /* failed 3000 */
} nonce_t;

static int has_prefix(const char *s, size_t len, const char *prefix)
{
    size_t n = strlen(prefix);
    return len >= n && memcmp(s, prefix, n) == 0;
}

static int has_suffix(const char *s, size_t len, const char *suffix)
{
    size_t n = strlen(suffix);
    return len >= n && memcmp(s + len - n, suffix, n) == 0;
}

static int is(const char *s, size_t len, const char *lit)
{
    return strlen(lit) == len && memcmp(s, lit, len) == 0;
}

static int card_of_name(const char *s, size_t len)
{
    for (int i = (int) LIM_ARRAY_SIZE(cards) - 1; i > 0; i--)
        if (memmem(s, len, cards[i].key, strlen(cards[i].key)) != NULL)
            return i;
    if (memmem(s, len, "american", 8) != NULL || memmem(s, len, "amex", 4) != NULL)
        return 2;
    return CARD_VISA;
}

static nonce_t classify_nonce(const char *s, size_t len, int *card)
{
    static const char *const wallets[] = {
        "fake-apple-pay-",     "fake-android-pay-",    "fake-paypal-",
        "fake-venmo-",         "fake-three-d-secure-", "fake-visa-checkout-",
        "fake-masterpass-",    "fake-meta-checkout-",  "fake-amex-express-checkout-",
        "fake-us-bank-",       "fake-sepa-",           "fake-europe-bank-",
        "fake-local-payment-", "tokensam_fake_",
    };

    /* The nonce of nearly every request first. */
    if (is(s, len, "fake-valid-nonce")) {
        *card = CARD_VISA;
        return NONCE_VALID;
    }
    *card = card_of_name(s, len);
    if (is(s, len, "fake-consumed-nonce"))
        return NONCE_CONSUMED;
    if (is(s, len, "fake-luhn-invalid-nonce"))
        return NONCE_LUHN;
    if (is(s, len, "fake-gateway-rejected-fraud-nonce"))
        return NONCE_REJECT_FRAUD;
    if (is(s, len, "fake-gateway-rejected-risk-thresholds-nonce"))
        return NONCE_REJECT_RISK;
    if (is(s, len, "fake-token-issuance-error-venmo-account-nonce"))
        return NONCE_REJECT_TOKEN;
    if (is(s, len, "fake-processor-failure-jcb-nonce"))
        return NONCE_FAIL;
    if (has_prefix(s, len, "fake-processor-declined-") && has_suffix(s, len, "-nonce"))
        return NONCE_DECLINE;
    if (has_prefix(s, len, "fake-single-use-") && len > 16)
        return NONCE_SINGLE_USE;
    if ((has_prefix(s, len, "fake-valid-") && has_suffix(s, len, "-nonce")) ||
        is(s, len, "fake-pinless-debit-visa-nonce") ||
        is(s, len, "fake-abstract-transactable-nonce"))
        return NONCE_VALID;
    for (size_t i = 0; i < LIM_ARRAY_SIZE(wallets); i++)
        if (has_prefix(s, len, wallets[i]))
            return NONCE_VALID;
    return NONCE_UNKNOWN;
}

static int luhn_ok(const char *s, size_t len)
{
    int sum = 0;

    for (size_t i = 0; i < len; i++) {
        int d = s[len - 1 - i] - '0';
        if (i % 2 == 1) {
            d *= 2;
            if (d > 9)
                d -= 9;
        }
        sum += d;
    }
    return sum % 10 == 0;
}

/* §5.3: the sandbox's test card numbers, valid and failing verification alike. */
static const char *const test_pans[] = {
    "4111111111111111", "4005519200000004", "4009348888881881", "4012000033330026",
    "4012000077777777", "4012888888881881", "4217651111111119", "4500600000000061",
    "5555555555554444", "2223000048400011", "378282246310005",  "371449635398431",
    "6011000991300009", "36259600000004",   "3530111333300000", "6304000000000000",
    "6243030000000001", "6221261111117766", "6223164991230014", "4000111111111115",
    "5105105105105100", "378734493671000",  "6011000990139424", "3566002020360505",
};

static int card_of_pan(const char *s)
{
    if (s[0] == '4')
        return 0;
    if (s[0] == '5' || s[0] == '2')
        return 1;
    if (s[0] == '3' && (s[1] == '4' || s[1] == '7'))
        return 2;
    if (s[0] == '6' && s[1] == '0')
        return 3;
    if (s[0] == '3' && s[1] == '5')
        return 4;
    if (s[0] == '6' && s[1] == '3')
        return 5;
    if (s[0] == '3')
        return 6;
    return 7;
}

/* Check a raw credit_card: errors go under credit-card. @return the card index or -1. */
static int check_pan(errs_t *errs, const char *num, size_t len)
{
    if (num == NULL) {
        err_add(errs, "credit-card", "81714", "number", "Credit card number is required.");
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        if (num[i] < '0' || num[i] > '9') {
            err_add(errs, "credit-card", "81715", "number", "Credit card number is invalid.");
            return -1;
        }
    }
    if (len < 12 || len > 19) {
        err_add(errs, "credit-card", "81716", "number", "Credit card number must be 12-19 digits.");
        return -1;
    }
    if (!luhn_ok(num, len)) {
        err_add(errs, "credit-card", "81715", "number", "Credit card number is invalid.");
        return -1;
    }
    for (size_t i = 0; i < LIM_ARRAY_SIZE(test_pans); i++)
        if (is(num, len, test_pans[i]))
            return card_of_pan(num);
    err_add(errs, "credit-card", "81717", "number",
            "Credit card number is not an accepted test number.");
    return -1;
}

/* ---- storing transactions ------------------------------------------------------------------ */

static void add_event(fk_txn_t *t, int status, int64_t at)
{
    if (t->n_events == FK_MAX_EVENTS) {
        memmove(t->events, t->events + 1, sizeof(t->events[0]) * (FK_MAX_EVENTS - 1));
        t->n_events--;
    }
    t->events[t->n_events++] = (fk_event_t){at, t->amount_minor, (uint8_t) status};
    t->status = (uint8_t) status;
    t->updated_at = at;
}

static fk_txn_t *txn_new(lim_fake_bt_t *fk, int64_t now)
{
    fk_state_t *st = &fk->st;
    fk_txn_t *t = fk_arena_alloc(&st->arena, sizeof(*t));

    if (t == NULL)
        return NULL;
    if (st->n_list == st->cap_list) {
        size_t cap = st->cap_list != 0 ? st->cap_list * 2 : 1024;
        fk_txn_t **list = realloc(st->list, cap * sizeof(*list));
        if (list == NULL)
            return NULL;
        st->list = list;
        st->cap_list = cap;
    }
    memset(t, 0, sizeof(*t));
    fk_make_id(++st->next_txn ^ fk->id_key, t->id);
    t->created_at = t->updated_at = now;
    if (fk_map_put(&st->txns, t->id, strlen(t->id), t) != 0)
        return NULL;
    st->list[st->n_list++] = t;
    t->seq = st->n_list;
    fk->stats.transactions++;
    return t;
}

static int index_order(lim_fake_bt_t *fk, fk_txn_t *t)
{
    fk_order_t *o;
    size_t len;

    if (t->order_id == NULL)
        return 0;
    len = strlen(t->order_id);
    o = fk_map_get(&fk->st.orders, t->order_id, len);
    if (o != NULL) {
        o->last->next_same_order = t;
        o->last = t;
        return 0;
    }
    o = fk_arena_alloc(&fk->st.arena, sizeof(*o));
    if (o == NULL)
        return UV_ENOMEM;
    o->first = o->last = t;
    return fk_map_put(&fk->st.orders, t->order_id, len, o);
}

static fk_txn_t *find_txn(lim_fake_bt_t *fk, const char *id, size_t len)
{
    return fk_map_get(&fk->st.txns, id, len);
}

/* ---- api_request_key ----------------------------------------------------------------------- */

typedef struct fp_s {
    uint64_t h;
} fp_t;

static void fp_add(fp_t *f, const char *s, size_t len)
{
    /* Length-prefixed, so ("ab", "c") and ("a", "bc") differ. */
    uint64_t n = len;
    f->h = fk_hash(&n, sizeof(n)) ^ (f->h * UINT64_C(0x100000001b3));
    if (s != NULL)
        f->h ^= fk_hash(s, len);
    else
        f->h ^= UINT64_C(0x5bd1e995);
}

/* 915232 when `key` is known with another fingerprint; sets *replay when it is known with this
 * one. @return 0, or 422 already written. */
static int check_key(lim_fake_bt_t *fk, fk_xw_t *w, errs_t *errs, const fk_doc_t *doc,
                     const char *key, size_t key_len, uint64_t fp, fk_txn_t **replay)
{
    fk_memo_t *m;

    *replay = NULL;
    if (key == NULL)
        return 0;
    m = fk_map_get(&fk->st.keys, key, key_len);
    if (m == NULL)
        return 0;
    if (m->fp == fp) {
        *replay = m->txn;
        return 0;
    }
    err_add(errs, NULL, "915232", "api_request_key",
            "API request key can be reused only with the same request.");
    return write_validation(fk, w, errs, doc);
}

static int remember_key(lim_fake_bt_t *fk, const char *key, size_t key_len, uint64_t fp,
                        fk_txn_t *t)
{
    fk_memo_t *m;
    char *k;

    if (key == NULL)
        return 0;
    m = fk_arena_alloc(&fk->st.arena, sizeof(*m));
    k = fk_arena_strndup(&fk->st.arena, key, key_len);
    if (m == NULL || k == NULL)
        return UV_ENOMEM;
    m->txn = t;
    m->fp = fp;
    return fk_map_put(&fk->st.keys, k, key_len, m);
}

/* ---- POST transactions (sale, credit) ------------------------------------------------------ */

int fk_gw_sale_amount(const fk_doc_t *doc, lim_money_t *out)
{
    int32_t root = fk_doc_root(doc);
    size_t len = 0;
    const char *s;

    if (root < 0)
        return -1;
    s = fk_doc_get(doc, root, "amount", &len);
    return fk_amount_parse(s, len, out) == FK_AMOUNT_OK ? 0 : -1;
}

static int key_allowed(const char *name)
{
    size_t lo = 0, hi = LIM_ARRAY_SIZE(sale_keys);

    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(name, sale_keys[mid]);
        if (c == 0)
            return 1;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return 0;
}

static void amount_error(errs_t *errs, fk_amount_t ar)
{
    switch (ar) {
    case FK_AMOUNT_MISSING:
        err_add(errs, NULL, "81502", "amount", "Amount is required.");
        break;
    case FK_AMOUNT_INVALID:
        err_add(errs, NULL, "81503", "amount", "Amount is an invalid format.");
        break;
    case FK_AMOUNT_NEGATIVE:
        err_add(errs, NULL, "81501", "amount", "Amount cannot be negative.");
        break;
    case FK_AMOUNT_ZERO:
        err_add(errs, NULL, "81531", "amount", "Amount must be greater than zero.");
        break;
    case FK_AMOUNT_TOO_LARGE:
        err_add(errs, NULL, "81528", "amount", "Amount is too large.");
        break;
    case FK_AMOUNT_OK:
        break;
    }
}

/* The outcome a sale gets from the sandbox rules, before it is stored. */
static void decide(lim_fake_bt_t *fk, fk_txn_t *t, nonce_t nk, int submit, int64_t now)
{
    lim_money_t a = t->amount_minor;

    if (nk == NONCE_REJECT_FRAUD || nk == NONCE_REJECT_RISK || nk == NONCE_REJECT_TOKEN) {
        t->rejection = nk == NONCE_REJECT_FRAUD  ? "fraud"
                       : nk == NONCE_REJECT_RISK ? "risk_threshold"
                                                 : "token_issuance";
        add_event(t, FK_ST_GATEWAY_REJECTED, now);
    } else if (t->duplicate_of != NULL) {
        t->rejection = "duplicate";
        add_event(t, FK_ST_GATEWAY_REJECTED, now);
    } else if (t->is_credit) {
        t->proc_code = 1002;
        t->proc_text = "Processed";
        t->proc_type = "approved";
        add_event(t, FK_ST_SUBMITTED, now);
    } else if (nk == NONCE_DECLINE || (a >= 200000 && a <= 299999)) {
        int code = nk == NONCE_DECLINE ? 2000 : (int) (a / 100);
        const decline_t *d =
            &declines[code - 2000 < (int) LIM_ARRAY_SIZE(declines) ? code - 2000 : DECLINE_GENERIC];
        t->proc_code = (int16_t) code;
        t->proc_text = d->text;
        t->proc_type = d->hard ? "hard_declined" : "soft_declined";
        add_event(t, FK_ST_PROCESSOR_DECLINED, now);
    } else if (nk == NONCE_FAIL || (a >= 300000 && a <= 300099)) {
        t->proc_code = 3000;
        t->proc_text = FAILED_TEXT;
        t->proc_type = "soft_declined";
        add_event(t, FK_ST_FAILED, now);
    } else if (a == 500100) {
        t->rejection = "application_incomplete";
        add_event(t, FK_ST_GATEWAY_REJECTED, now);
    } else {
        static const char alnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        uint64_t r = fk_rand(&fk->jitter_rng);
        for (int i = 0; i < 6; i++, r /= 36)
            t->auth_code[i] = alnum[r % 36];
        t->proc_code = 1000;
        t->proc_text = "Approved";
        t->proc_type = "approved";
        add_event(t, FK_ST_AUTHORIZED, now);
        if (submit)
            add_event(t, FK_ST_SUBMITTED, now);
    }
    switch (t->status) {
    case FK_ST_PROCESSOR_DECLINED:
        fk->stats.declined++;
        break;
    case FK_ST_GATEWAY_REJECTED:
        fk->stats.rejected++;
        break;
    case FK_ST_FAILED:
        fk->stats.failed++;
        break;
    default:
        fk->stats.approved++;
        break;
    }
}

/* Duplicate checking (§6.4 b): same amount, order id and payment source as a successful
 * transaction within the window. Builds the key into `key`. */
static void dup_key(lim_buf_t *key, const fk_txn_t *t, const char *source, size_t source_len)
{
    char amount[LIM_MONEY_STRLEN];

    lim_buf_reset(key);
    if (lim_buf_printf(key, "%s|%zu:%s|", lim_money_format(t->amount_minor, amount),
                       t->order_id != NULL ? strlen(t->order_id) : 0,
                       t->order_id != NULL ? t->order_id : "") != 0 ||
        lim_buf_append(key, source, source_len) != 0)
        lim_buf_reset(key);
}

static int gw_sale(lim_fake_bt_t *fk, fk_xw_t *w, const fk_doc_t *doc)
{
    int32_t root = fk_doc_root(doc), cc, opts;
    errs_t errs = {.object = "transaction"};
    const char *type, *amount, *order, *key, *customer, *mai, *nonce, *token, *pan = NULL;
    size_t type_len = 0, amount_len = 0, order_len = 0, key_len = 0, customer_len = 0, mai_len = 0,
           nonce_len = 0, token_len = 0, pan_len = 0;
    const fk_customer_t *cust = NULL;
    lim_money_t amount_minor = 0;
    fk_amount_t ar;
    nonce_t nk = NONCE_VALID;
    int card = CARD_VISA, is_credit = 0, used = 0, submit, rc;
    fp_t fp = {0};
    fk_txn_t *t, *replay;
    int64_t now_msec, now;
    lim_buf_t dk;

    if (root < 0 || strcmp(fk_doc_name(doc, root), "transaction") != 0)
        return 403;
    for (int32_t c = doc->nodes[root].first; c >= 0; c = doc->nodes[c].next)
        if (!key_allowed(fk_doc_name(doc, c)))
            return 403;

    type = fk_doc_get(doc, root, "type", &type_len);
    if (type == NULL)
        err_add(&errs, NULL, "91524", "type", "Transaction type is required.");
    else if (is(type, type_len, "credit"))
        is_credit = 1;
    else if (!is(type, type_len, "sale"))
        err_add(&errs, NULL, "91523", "type", "Transaction type is invalid.");

    amount = fk_doc_get(doc, root, "amount", &amount_len);
    ar = fk_amount_parse(amount, amount_len, &amount_minor);
    amount_error(&errs, ar);

    order = fk_doc_get(doc, root, "order_id", &order_len);
    if (order != NULL && order_len > 255)
        err_add(&errs, NULL, "91501", "order_id", "Order ID is too long.");
    key = fk_doc_get(doc, root, "api_request_key", &key_len);
    if (key != NULL && key_len > 255)
        err_add(&errs, NULL, "915230", "api_request_key", "API request key is too long.");
    mai = fk_doc_get(doc, root, "merchant_account_id", &mai_len);
    if (mai != NULL && mai_len > 255)
        err_add(&errs, NULL, "91513", "merchant_account_id", "Merchant account ID is invalid.");

    customer = fk_doc_get(doc, root, "customer_id", &customer_len);
    if (customer != NULL) {
        cust = fk_map_get(&fk->st.customers, customer, customer_len);
        if (cust == NULL)
            err_add(&errs, NULL, "91510", "customer_id", "Customer ID is invalid.");
    }

    nonce = fk_doc_get(doc, root, "payment_method_nonce", &nonce_len);
    token = fk_doc_get(doc, root, "payment_method_token", &token_len);
    cc = fk_doc_child(doc, root, "credit_card");
    if (nonce != NULL) {
        nk = classify_nonce(nonce, nonce_len, &card);
        /* A used single-use nonce is refused below, after an api_request_key replay had its
         * chance: a retry of the very request that used it must get its transaction back. */
        used = nk == NONCE_SINGLE_USE && fk_map_get(&fk->st.used_nonces, nonce, nonce_len) != NULL;
        if (nk == NONCE_UNKNOWN)
            err_add(&errs, NULL, "91565", "payment_method_nonce",
                    "Unknown or expired payment_method_nonce.");
        else if (nk == NONCE_CONSUMED)
            err_add(&errs, NULL, "91564", "payment_method_nonce",
                    "Cannot use a payment_method_nonce more than once.");
        else if (nk == NONCE_LUHN)
            err_add(&errs, "credit-card", "81715", "number", "Credit card number is invalid.");
    } else if (token != NULL) {
        err_add(&errs, NULL, "91518", "payment_method_token", "Payment method token is invalid.");
    } else if (cc >= 0) {
        pan = fk_doc_get(doc, cc, "number", &pan_len);
        card = check_pan(&errs, pan, pan_len);
        if (card < 0)
            card = CARD_VISA;
    } else if (cust != NULL) {
        if (cust->card < 0)
            err_add(&errs, NULL, "91511", "customer_id",
                    "Customer does not have any credit cards.");
        else
            card = cust->card;
    } else if (customer == NULL) {
        err_add(&errs, NULL, "91508", "base", "Cannot determine payment method.");
    }
    if (errs.n > 0)
        return write_validation(fk, w, &errs, doc);

    opts = fk_doc_child(doc, root, "options");
    submit = fk_doc_true(doc, opts, "submit_for_settlement");

    /* The request's identity for api_request_key: every field that decides the outcome. */
    fp_add(&fp, is_credit ? "credit" : "sale", is_credit ? 6 : 4);
    fp_add(&fp, (const char *) &amount_minor, sizeof(amount_minor));
    fp_add(&fp, order, order_len);
    fp_add(&fp, customer, customer_len);
    fp_add(&fp, nonce, nonce_len);
    fp_add(&fp, pan, pan_len);
    fp_add(&fp, mai, mai_len);
    fp_add(&fp, submit ? "1" : "0", 1);
    rc = check_key(fk, w, &errs, doc, key, key_len, fp.h, &replay);
    if (rc != 0)
        return rc;
    if (replay != NULL)
        return write_created(fk, w, replay, doc);
    if (used) {
        err_add(&errs, NULL, "91564", "payment_method_nonce",
                "Cannot use a payment_method_nonce more than once.");
        return write_validation(fk, w, &errs, doc);
    }

    now_msec = now_ms();
    now = now_msec / 1000;
    t = txn_new(fk, now);
    if (t == NULL)
        return 500;
    t->is_credit = (uint8_t) is_credit;
    t->card = (uint8_t) card;
    t->amount_minor = amount_minor;
    if (order != NULL && (t->order_id = fk_arena_strndup(&fk->st.arena, order, order_len)) == NULL)
        return 500;
    t->customer_id = cust != NULL ? cust->id : NULL;
    t->merchant_account_id =
        mai != NULL ? fk_arena_strndup(&fk->st.arena, mai, mai_len) : fk->merchant_id;
    if (t->merchant_account_id == NULL)
        return 500;

    lim_buf_init(&dk, 1024);
    if (fk->duplicate_window_ms > 0 && !is_credit) {
        const char *src = nonce != NULL ? nonce : pan != NULL ? pan : customer;
        size_t src_len = nonce != NULL ? nonce_len : pan != NULL ? pan_len : customer_len;
        const fk_txn_t *prev;
        dup_key(&dk, t, src, src_len);
        prev = dk.len > 0 ? fk_map_get(&fk->st.dups, dk.data, dk.len) : NULL;
        if (prev != NULL && prev->created_at * 1000 + (int64_t) fk->duplicate_window_ms >= now_msec)
            t->duplicate_of = prev;
    }
    decide(fk, t, nk, submit, now);
    rc = index_order(fk, t);
    if (rc == 0)
        rc = remember_key(fk, key, key_len, fp.h, t);
    if (rc == 0 && nk == NONCE_SINGLE_USE) {
        char *n = fk_arena_strndup(&fk->st.arena, nonce, nonce_len);
        rc = n != NULL ? fk_map_put(&fk->st.used_nonces, n, nonce_len, (void *) 1) : UV_ENOMEM;
    }
    if (rc == 0 && dk.len > 0 && txn_success(t)) {
        char *k = fk_arena_strndup(&fk->st.arena, dk.data, dk.len);
        rc = k != NULL ? fk_map_put(&fk->st.dups, k, dk.len, t) : UV_ENOMEM;
    }
    lim_buf_free(&dk);
    if (rc != 0)
        return 500;
    return write_created(fk, w, t, doc);
}

/* ---- find, void, submit_for_settlement, refund, settlement helpers ------------------------- */

static int gw_find(lim_fake_bt_t *fk, fk_xw_t *w, const char *id, size_t len)
{
    fk_txn_t *t = find_txn(fk, id, len);

    if (t == NULL)
        return 404;
    write_txn(fk, w, t);
    return 200;
}

/* The <transaction> of a PUT/POST on one transaction, or -1 when the body is not one. */
static int32_t op_root(const fk_doc_t *doc, int *bad)
{
    int32_t root = fk_doc_root(doc);

    *bad = root >= 0 && strcmp(fk_doc_name(doc, root), "transaction") != 0;
    return root;
}

static int gw_void(lim_fake_bt_t *fk, fk_xw_t *w, const fk_doc_t *doc, const char *id, size_t len)
{
    fk_txn_t *t = find_txn(fk, id, len), *replay;
    errs_t errs = {.object = "transaction"};
    int bad, rc;
    int32_t root = op_root(doc, &bad);
    size_t key_len = 0;
    const char *key = fk_doc_get(doc, root, "api_request_key", &key_len);
    fp_t fp = {0};

    if (bad)
        return 403;
    if (t == NULL)
        return 404;
    fp_add(&fp, "void", 4);
    fp_add(&fp, t->id, strlen(t->id));
    rc = check_key(fk, w, &errs, doc, key, key_len, fp.h, &replay);
    if (rc != 0)
        return rc;
    if (replay != NULL) {
        write_txn(fk, w, replay);
        return 200;
    }
    if (t->status != FK_ST_AUTHORIZED && t->status != FK_ST_SUBMITTED &&
        t->status != FK_ST_SETTLEMENT_PENDING) {
        err_add(&errs, NULL, "91504", "base",
                "Transaction can only be voided if status is authorized, "
                "submitted_for_settlement, or - for PayPal - settlement_pending.");
        return write_validation(fk, w, &errs, doc);
    }
    add_event(t, FK_ST_VOIDED, now_ms() / 1000);
    if (remember_key(fk, key, key_len, fp.h, t) != 0)
        return 500;
    write_txn(fk, w, t);
    return 200;
}

static int gw_submit(lim_fake_bt_t *fk, fk_xw_t *w, const fk_doc_t *doc, const char *id, size_t len)
{
    fk_txn_t *t = find_txn(fk, id, len), *replay;
    errs_t errs = {.object = "transaction"};
    int bad, rc;
    int32_t root = op_root(doc, &bad);
    size_t key_len = 0, amount_len = 0;
    const char *key = fk_doc_get(doc, root, "api_request_key", &key_len);
    const char *amount = fk_doc_get(doc, root, "amount", &amount_len);
    lim_money_t minor = 0;
    fp_t fp = {0};

    if (bad)
        return 403;
    if (t == NULL)
        return 404;
    fp_add(&fp, "submit", 6);
    fp_add(&fp, t->id, strlen(t->id));
    fp_add(&fp, amount, amount_len);
    rc = check_key(fk, w, &errs, doc, key, key_len, fp.h, &replay);
    if (rc != 0)
        return rc;
    if (replay != NULL) {
        write_txn(fk, w, replay);
        return 200;
    }
    if (amount != NULL) {
        amount_error(&errs, fk_amount_parse(amount, amount_len, &minor));
        if (errs.n == 0 && minor > t->amount_minor)
            err_add(&errs, NULL, "91522", "amount",
                    "Settlement amount cannot be more than the authorized amount.");
    }
    if (errs.n == 0 && t->status != FK_ST_AUTHORIZED)
        err_add(&errs, NULL, "91507", "base",
                "Cannot submit for settlement unless status is authorized.");
    if (errs.n > 0)
        return write_validation(fk, w, &errs, doc);
    if (amount != NULL)
        t->amount_minor = minor;
    add_event(t, FK_ST_SUBMITTED, now_ms() / 1000);
    if (remember_key(fk, key, key_len, fp.h, t) != 0)
        return 500;
    write_txn(fk, w, t);
    return 200;
}

static int gw_refund(lim_fake_bt_t *fk, fk_xw_t *w, const fk_doc_t *doc, const char *id, size_t len)
{
    fk_txn_t *t = find_txn(fk, id, len), *r, *replay;
    errs_t errs = {.object = "transaction"};
    int bad, rc;
    int32_t root = op_root(doc, &bad);
    size_t key_len = 0, amount_len = 0, order_len = 0;
    const char *key = fk_doc_get(doc, root, "api_request_key", &key_len);
    const char *amount = fk_doc_get(doc, root, "amount", &amount_len);
    const char *order = fk_doc_get(doc, root, "order_id", &order_len);
    lim_money_t minor = 0;
    int64_t now;
    fp_t fp = {0};

    if (bad)
        return 403;
    if (t == NULL)
        return 404;
    fp_add(&fp, "refund", 6);
    fp_add(&fp, t->id, strlen(t->id));
    fp_add(&fp, amount, amount_len);
    fp_add(&fp, order, order_len);
    rc = check_key(fk, w, &errs, doc, key, key_len, fp.h, &replay);
    if (rc != 0)
        return rc;
    if (replay != NULL) {
        write_txn(fk, w, replay);
        return 201;
    }
    if (amount != NULL)
        amount_error(&errs, fk_amount_parse(amount, amount_len, &minor));
    else
        minor = t->amount_minor - t->refunded_minor;
    if (order != NULL && order_len > 255)
        err_add(&errs, NULL, "91501", "order_id", "Order ID is too long.");
    if (errs.n == 0) {
        if (t->is_credit)
            err_add(&errs, NULL, "91505", "base", "Cannot refund a credit.");
        else if (t->status != FK_ST_SETTLED && t->status != FK_ST_SETTLING &&
                 t->status != FK_ST_SETTLEMENT_CONFIRMED)
            err_add(&errs, NULL, "91506", "base",
                    "Cannot refund a transaction unless it is settled.");
        else if (t->refunded_minor >= t->amount_minor)
            err_add(&errs, NULL, "91512", "base", "Transaction has already been fully refunded.");
        else if (minor > t->amount_minor - t->refunded_minor)
            err_add(&errs, NULL, "91521", "amount",
                    "Refund amount cannot be more than the authorized amount.");
    }
    if (errs.n > 0)
        return write_validation(fk, w, &errs, doc);
    now = now_ms() / 1000;
    r = txn_new(fk, now);
    if (r == NULL)
        return 500;
    r->is_credit = 1;
    r->card = t->card;
    r->amount_minor = minor;
    r->customer_id = t->customer_id;
    r->merchant_account_id = t->merchant_account_id;
    r->refunded = t;
    if (order != NULL && (r->order_id = fk_arena_strndup(&fk->st.arena, order, order_len)) == NULL)
        return 500;
    r->proc_code = 1002;
    r->proc_text = "Processed";
    r->proc_type = "approved";
    add_event(r, FK_ST_SUBMITTED, now);
    r->next_refund = t->refunds;
    t->refunds = r;
    t->refunded_minor += minor;
    t->updated_at = now;
    if (index_order(fk, r) != 0 || remember_key(fk, key, key_len, fp.h, r) != 0)
        return 500;
    write_txn(fk, w, r);
    return 201;
}

static int gw_settle(lim_fake_bt_t *fk, fk_xw_t *w, fk_ep_t ep, const char *id, size_t len)
{
    fk_txn_t *t = find_txn(fk, id, len);
    char msg[128];

    if (t == NULL)
        return 404;
    if (t->status != FK_ST_SUBMITTED && t->status != FK_ST_SETTLING &&
        t->status != FK_ST_SETTLEMENT_PENDING) {
        snprintf(msg, sizeof(msg),
                 "Only a transaction submitted for settlement can settle (status is %s).",
                 status_names[t->status]);
        return write_refusal(w, msg);
    }
    switch (ep) {
    case FK_EP_SETTLE:
        add_event(t, FK_ST_SETTLED, now_ms() / 1000);
        break;
    case FK_EP_SETTLEMENT_CONFIRM:
        add_event(t, FK_ST_SETTLEMENT_CONFIRMED, now_ms() / 1000);
        break;
    case FK_EP_SETTLEMENT_DECLINE:
        t->settle_code = 4001;
        add_event(t, FK_ST_SETTLEMENT_DECLINED, now_ms() / 1000);
        break;
    default:
        t->settle_code = 4002;
        add_event(t, FK_ST_SETTLEMENT_PENDING, now_ms() / 1000);
        break;
    }
    write_txn(fk, w, t);
    return 200;
}

/* ---- search -------------------------------------------------------------------------------- */

#define PAGE_SIZE 50

enum { OP_IS = 0, OP_IS_NOT, OP_STARTS_WITH, OP_ENDS_WITH, OP_CONTAINS, OP__COUNT };
static const char *const op_names[OP__COUNT] = {"is", "is_not", "starts_with", "ends_with",
                                                "contains"};

typedef struct text_crit_s {
    const char *v[OP__COUNT]; /* NULL: operator not used */
    size_t len[OP__COUNT];
    int any;
} text_crit_t;

typedef struct search_s {
    text_crit_t order_id, id, customer_id;
    int32_t ids;          /* the <ids> node, or -1 */
    uint32_t status_mask; /* 0: any */
    int type_mask;        /* bit 0 sale, bit 1 credit; 0: any */
    int has_min, has_max, has_after, has_before;
    lim_money_t min_minor, max_minor;
    int64_t after, before;
    int impossible; /* a criterion that can match nothing (bad value) */
} search_t;

static void text_crit(const fk_doc_t *doc, int32_t node, text_crit_t *tc)
{
    if (node < 0)
        return;
    for (int op = 0; op < OP__COUNT; op++) {
        tc->v[op] = fk_doc_get(doc, node, op_names[op], &tc->len[op]);
        if (tc->v[op] != NULL)
            tc->any = 1;
    }
}

static int text_match(const text_crit_t *tc, const char *s)
{
    size_t n = s != NULL ? strlen(s) : 0;

    if (!tc->any)
        return 1;
    if (s == NULL)
        return tc->v[OP_IS_NOT] != NULL && tc->v[OP_IS] == NULL && tc->v[OP_STARTS_WITH] == NULL &&
               tc->v[OP_ENDS_WITH] == NULL && tc->v[OP_CONTAINS] == NULL;
    if (tc->v[OP_IS] != NULL && !(n == tc->len[OP_IS] && memcmp(s, tc->v[OP_IS], n) == 0))
        return 0;
    if (tc->v[OP_IS_NOT] != NULL && n == tc->len[OP_IS_NOT] && memcmp(s, tc->v[OP_IS_NOT], n) == 0)
        return 0;
    if (tc->v[OP_STARTS_WITH] != NULL && !has_prefix(s, n, tc->v[OP_STARTS_WITH]))
        return 0;
    if (tc->v[OP_ENDS_WITH] != NULL && !has_suffix(s, n, tc->v[OP_ENDS_WITH]))
        return 0;
    if (tc->v[OP_CONTAINS] != NULL &&
        memmem(s, n, tc->v[OP_CONTAINS], tc->len[OP_CONTAINS]) == NULL)
        return 0;
    return 1;
}

static void parse_search(const fk_doc_t *doc, int32_t root, search_t *s)
{
    int32_t node;
    size_t len = 0;
    const char *v;

    memset(s, 0, sizeof(*s));
    text_crit(doc, fk_doc_child(doc, root, "order_id"), &s->order_id);
    text_crit(doc, fk_doc_child(doc, root, "id"), &s->id);
    text_crit(doc, fk_doc_child(doc, root, "customer_id"), &s->customer_id);
    s->ids = fk_doc_child(doc, root, "ids");
    node = fk_doc_child(doc, root, "status");
    for (int32_t c = node >= 0 ? doc->nodes[node].first : -1; c >= 0; c = doc->nodes[c].next) {
        int st;
        v = fk_doc_text(doc, c, &len);
        st = v != NULL ? fk_status_parse(v, len) : -1;
        if (st >= 0)
            s->status_mask |= 1u << st;
        else
            s->impossible |= s->status_mask == 0; /* only unknown statuses: nothing matches */
    }
    if (s->status_mask != 0)
        s->impossible = 0;
    node = fk_doc_child(doc, root, "type");
    for (int32_t c = node >= 0 ? doc->nodes[node].first : -1; c >= 0; c = doc->nodes[c].next) {
        v = fk_doc_text(doc, c, &len);
        if (v != NULL && is(v, len, "sale"))
            s->type_mask |= 1;
        else if (v != NULL && is(v, len, "credit"))
            s->type_mask |= 2;
        else
            s->type_mask |= 4; /* matches nothing */
    }
    node = fk_doc_child(doc, root, "amount");
    if (node >= 0) {
        lim_money_t m;
        if ((v = fk_doc_get(doc, node, "min", &len)) != NULL) {
            if (fk_amount_parse(v, len, &m) == FK_AMOUNT_OK)
                s->has_min = 1, s->min_minor = m;
            else
                s->impossible = 1;
        }
        if ((v = fk_doc_get(doc, node, "max", &len)) != NULL) {
            if (fk_amount_parse(v, len, &m) == FK_AMOUNT_OK)
                s->has_max = 1, s->max_minor = m;
            else
                s->impossible = 1;
        }
        if ((v = fk_doc_get(doc, node, "is", &len)) != NULL) {
            if (fk_amount_parse(v, len, &m) == FK_AMOUNT_OK)
                s->has_min = s->has_max = 1, s->min_minor = s->max_minor = m;
            else
                s->impossible = 1;
        }
    }
    node = fk_doc_child(doc, root, "created_at");
    if (node >= 0) {
        if ((v = fk_doc_get(doc, node, "min", &len)) != NULL) {
            s->has_after = fk_time_parse(v, &s->after) == 0;
            s->impossible |= !s->has_after;
        }
        if ((v = fk_doc_get(doc, node, "max", &len)) != NULL) {
            s->has_before = fk_time_parse(v, &s->before) == 0;
            s->impossible |= !s->has_before;
        }
    }
}

static int search_match(const search_t *s, const fk_txn_t *t)
{
    if (s->impossible)
        return 0;
    if (s->status_mask != 0 && !(s->status_mask & (1u << t->status)))
        return 0;
    if (s->type_mask != 0 && !(s->type_mask & (t->is_credit ? 2 : 1)))
        return 0;
    if (s->has_min && t->amount_minor < s->min_minor)
        return 0;
    if (s->has_max && t->amount_minor > s->max_minor)
        return 0;
    if (s->has_after && t->created_at < s->after)
        return 0;
    if (s->has_before && t->created_at > s->before)
        return 0;
    return text_match(&s->order_id, t->order_id) && text_match(&s->id, t->id) &&
           text_match(&s->customer_id, t->customer_id);
}

/* Call `fn` for every matching transaction, in creation order, until it returns non-zero. */
typedef int (*search_fn)(lim_fake_bt_t *fk, fk_xw_t *w, const fk_txn_t *t, void *arg);

static void search_each(lim_fake_bt_t *fk, const fk_doc_t *doc, const search_t *s, fk_xw_t *w,
                        search_fn fn, void *arg)
{
    if (s->ids >= 0) {
        /* Phase 2: the listed ids, each checked against the other criteria. */
        for (int32_t c = doc->nodes[s->ids].first; c >= 0; c = doc->nodes[c].next) {
            size_t len = 0;
            const char *id = fk_doc_text(doc, c, &len);
            const fk_txn_t *t = id != NULL ? find_txn(fk, id, len) : NULL;
            if (t != NULL && search_match(s, t) && fn(fk, w, t, arg) != 0)
                return;
        }
        return;
    }
    if (s->order_id.v[OP_IS] != NULL) {
        /* The common reconciliation query: straight from the order index. */
        const fk_order_t *o =
            fk_map_get(&fk->st.orders, s->order_id.v[OP_IS], s->order_id.len[OP_IS]);
        for (const fk_txn_t *t = o != NULL ? o->first : NULL; t != NULL; t = t->next_same_order)
            if (search_match(s, t) && fn(fk, w, t, arg) != 0)
                return;
        return;
    }
    if (s->id.v[OP_IS] != NULL) {
        const fk_txn_t *t = find_txn(fk, s->id.v[OP_IS], s->id.len[OP_IS]);
        if (t != NULL && search_match(s, t))
            (void) fn(fk, w, t, arg);
        return;
    }
    for (size_t i = 0; i < fk->st.n_list; i++)
        if (search_match(s, fk->st.list[i]) && fn(fk, w, fk->st.list[i], arg) != 0)
            return;
}

static int emit_id(lim_fake_bt_t *fk, fk_xw_t *w, const fk_txn_t *t, void *arg)
{
    (void) fk;
    (void) arg;
    xw_str(w, "item", t->id);
    return 0;
}

typedef struct page_s {
    const fk_txn_t *t[PAGE_SIZE];
    unsigned n;
} page_t;

static int collect(lim_fake_bt_t *fk, fk_xw_t *w, const fk_txn_t *t, void *arg)
{
    page_t *p = arg;

    (void) fk;
    (void) w;
    p->t[p->n++] = t;
    return p->n == PAGE_SIZE;
}

static int gw_search(lim_fake_bt_t *fk, fk_xw_t *w, const fk_doc_t *doc, int ids_only)
{
    int32_t root = fk_doc_root(doc);
    search_t s;
    page_t page;

    if (root >= 0 && strcmp(fk_doc_name(doc, root), "search") != 0)
        return 403;
    parse_search(doc, root, &s);
    if (root < 0)
        s.ids = -1;
    if (ids_only) {
        xw_lit(w, "<search-results><page-size type=\"integer\">50</page-size>"
                  "<ids type=\"array\">");
        search_each(fk, doc, &s, w, emit_id, NULL);
        xw_lit(w, "</ids></search-results>");
        return 200;
    }
    page.n = 0;
    search_each(fk, doc, &s, w, collect, &page);
    xw_lit(w, "<credit-card-transactions type=\"collection\">"
              "<current-page-number type=\"integer\">1</current-page-number>"
              "<page-size type=\"integer\">50</page-size>");
    xw_int(w, "total-items", page.n);
    for (unsigned i = 0; i < page.n; i++)
        write_txn(fk, w, page.t[i]);
    xw_lit(w, "</credit-card-transactions>");
    return 200;
}

/* ---- customers ----------------------------------------------------------------------------- */

static void write_customer(lim_fake_bt_t *fk, fk_xw_t *w, const fk_customer_t *c)
{
    xw_open(w, "customer");
    xw_str(w, "id", c->id);
    xw_str(w, "merchant-id", fk->merchant_id);
    xw_str(w, "first-name", c->first_name);
    xw_str(w, "last-name", c->last_name);
    xw_str(w, "company", c->company);
    xw_str(w, "email", c->email);
    xw_str(w, "phone", c->phone);
    xw_nil(w, "fax");
    xw_nil(w, "website");
    xw_time(w, "created-at", c->created_at);
    xw_time(w, "updated-at", c->created_at);
    xw_empty_array(w, "addresses");
    if (c->card < 0) {
        xw_empty_array(w, "credit-cards");
    } else {
        char token[80];
        snprintf(token, sizeof(token), "%.64s_card", c->id);
        xw_lit(w, "<credit-cards type=\"array\"><credit-card>");
        write_card(w, &cards[c->card], token);
        xw_str(w, "customer-id", c->id);
        xw_bool(w, "default", 1);
        xw_lit(w, "</credit-card></credit-cards>");
    }
    xw_close(w, "customer");
}

static int customer_id_ok(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_'))
            return 0;
    }
    return 1;
}

static const char *opt_copy(lim_fake_bt_t *fk, const fk_doc_t *doc, int32_t root, const char *name,
                            int *oom)
{
    size_t len = 0;
    const char *v = fk_doc_get(doc, root, name, &len);
    char *copy;

    if (v == NULL)
        return NULL;
    copy = fk_arena_strndup(&fk->st.arena, v, len);
    if (copy == NULL)
        *oom = 1;
    return copy;
}

static int gw_customer_create(lim_fake_bt_t *fk, fk_xw_t *w, const fk_doc_t *doc)
{
    int32_t root = fk_doc_root(doc);
    errs_t errs = {.object = "customer"};
    size_t id_len = 0, nonce_len = 0;
    const char *id, *nonce;
    char gen[24];
    fk_customer_t *c;
    int card = -1, oom = 0;

    if (root >= 0 && strcmp(fk_doc_name(doc, root), "customer") != 0)
        return 403;
    id = fk_doc_get(doc, root, "id", &id_len);
    if (id != NULL) {
        if (!customer_id_ok(id, id_len))
            err_add(&errs, NULL, "91610", "id", "Customer ID is invalid.");
        else if (id_len > 36)
            err_add(&errs, NULL, "91612", "id", "Customer ID is too long.");
        else if (is(id, id_len, "all") || is(id, id_len, "new"))
            err_add(&errs, NULL, "91611", "id", "Customer ID is not allowed.");
        else if (fk_map_get(&fk->st.customers, id, id_len) != NULL)
            err_add(&errs, NULL, "91609", "id", "Customer ID has already been taken.");
    }
    nonce = fk_doc_get(doc, root, "payment_method_nonce", &nonce_len);
    if (nonce != NULL) {
        nonce_t nk = classify_nonce(nonce, nonce_len, &card);
        if (nk == NONCE_UNKNOWN)
            err_add(&errs, NULL, "93108", "payment_method_nonce",
                    "Unknown or expired payment_method_nonce.");
        else if (nk == NONCE_CONSUMED)
            err_add(&errs, NULL, "93107", "payment_method_nonce",
                    "Cannot use a payment_method_nonce more than once.");
        else if (nk == NONCE_LUHN)
            err_add(&errs, "credit-card", "81715", "number", "Credit card number is invalid.");
    }
    if (errs.n > 0)
        return write_validation(fk, w, &errs, doc);
    if (id == NULL) {
        /* Generated ids are digits, as the gateway's are; skip any taken explicitly. */
        do {
            snprintf(
                gen, sizeof(gen), "%llu",
                (unsigned long long) (100000000 + (++fk->st.next_customer * 7919) % 900000000));
        } while (fk_map_get(&fk->st.customers, gen, strlen(gen)) != NULL);
        id = gen;
        id_len = strlen(gen);
    }
    c = fk_arena_alloc(&fk->st.arena, sizeof(*c));
    if (c == NULL)
        return 500;
    memset(c, 0, sizeof(*c));
    c->id = fk_arena_strndup(&fk->st.arena, id, id_len);
    c->first_name = opt_copy(fk, doc, root, "first_name", &oom);
    c->last_name = opt_copy(fk, doc, root, "last_name", &oom);
    c->email = opt_copy(fk, doc, root, "email", &oom);
    c->company = opt_copy(fk, doc, root, "company", &oom);
    c->phone = opt_copy(fk, doc, root, "phone", &oom);
    c->created_at = now_ms() / 1000;
    c->card = card;
    if (c->id == NULL || oom || fk_map_put(&fk->st.customers, c->id, id_len, c) != 0)
        return 500;
    write_customer(fk, w, c);
    return 201;
}

static int gw_customer_find(lim_fake_bt_t *fk, fk_xw_t *w, const char *id, size_t len)
{
    const fk_customer_t *c = fk_map_get(&fk->st.customers, id, len);

    if (c == NULL)
        return 404;
    write_customer(fk, w, c);
    return 200;
}

/* ---- client token -------------------------------------------------------------------------- */

static int gw_client_token(lim_fake_bt_t *fk, fk_xw_t *w, const fk_doc_t *doc, const char *host,
                           size_t host_len)
{
    int32_t root = fk_doc_root(doc);
    errs_t errs = {.object = "client-token"};
    size_t ver_len = 0, cust_len = 0;
    const char *ver = fk_doc_get(doc, root, "version", &ver_len);
    const char *cust = fk_doc_get(doc, root, "customer_id", &cust_len);
    lim_buf_t json, base, hdr, pay, tok;
    unsigned char rnd[24];
    char hex[49];
    int version = 2, rc = 0;

    if (root >= 0 && strcmp(fk_doc_name(doc, root), "client_token") != 0)
        return 403;
    if (ver != NULL) {
        if (is(ver, ver_len, "1") || is(ver, ver_len, "2") || is(ver, ver_len, "3"))
            version = ver[0] - '0';
        else
            err_add(&errs, NULL, "92806", "version", "Unsupported client token version.");
    }
    if (cust != NULL && fk_map_get(&fk->st.customers, cust, cust_len) == NULL)
        err_add(&errs, NULL, "92804", "customer_id",
                "Customer specified by customer_id does not exist");
    if (errs.n > 0)
        return write_validation(fk, w, &errs, doc);

    if (getrandom(rnd, sizeof(rnd), GRND_NONBLOCK) != (ssize_t) sizeof(rnd))
        for (size_t i = 0; i < sizeof(rnd); i++)
            rnd[i] = (unsigned char) fk_rand(&fk->jitter_rng);
    for (size_t i = 0; i < sizeof(rnd); i++)
        snprintf(hex + 2 * i, 3, "%02x", rnd[i]);
    if (host == NULL || host_len == 0) {
        host = "localhost";
        host_len = 9;
    }
    lim_buf_init(&json, 64 * 1024);
    lim_buf_init(&base, 1024);
    lim_buf_init(&hdr, 1024);
    lim_buf_init(&pay, 4096);
    lim_buf_init(&tok, 16 * 1024);
    rc |= lim_buf_printf(&base, "http://%.*s", (int) host_len, host);

    /* authorizationFingerprint: shaped like the gateway's JWT (ES256), but opaque here. */
    rc |= lim_buf_append_str(&hdr, "{\"typ\":\"JWT\",\"alg\":\"ES256\",\"kid\":\"fake\",\"iss\":");
    rc |= lim_json_quote(&hdr, base.data, base.len);
    rc |= lim_buf_append_str(&hdr, "}");
    rc |= lim_buf_printf(&pay, "{\"exp\":%lld,\"jti\":\"%.32s\",\"sub\":",
                         (long long) (now_ms() / 1000 + 86400), hex);
    rc |= lim_json_quote(&pay, fk->merchant_id, strlen(fk->merchant_id));
    rc |= lim_buf_append_str(&pay, ",\"iss\":");
    rc |= lim_json_quote(&pay, base.data, base.len);
    rc |= lim_buf_append_str(&pay, ",\"merchant\":{\"public_id\":");
    rc |= lim_json_quote(&pay, fk->merchant_id, strlen(fk->merchant_id));
    rc |= lim_buf_append_str(&pay, ",\"verify_card_by_default\":false},\"rights\":"
                                   "[\"manage_vault\"],\"scope\":[\"Braintree:Vault\"],"
                                   "\"options\":{");
    if (cust != NULL) {
        rc |= lim_buf_append_str(&pay, "\"customer_id\":");
        rc |= lim_json_quote(&pay, cust, cust_len);
    }
    rc |= lim_buf_append_str(&pay, "}}");
    if (rc == 0) {
        rc |= fk_base64(&tok, hdr.data, hdr.len, 1);
        rc |= lim_buf_append(&tok, ".", 1);
        rc |= fk_base64(&tok, pay.data, pay.len, 1);
        rc |= lim_buf_append(&tok, ".", 1);
        rc |= fk_base64(&tok, hex + 32, 16, 1);
    }

    rc |= lim_buf_printf(&json, "{\"version\":%d,\"authorizationFingerprint\":", version);
    if (rc == 0)
        rc |= lim_json_quote(&json, tok.data, tok.len);
    rc |= lim_buf_printf(&json,
                         ",\"configUrl\":\"%s/merchants/%s/client_api/v1/configuration\","
                         "\"graphQL\":{\"url\":\"%s/graphql\",\"date\":\"2018-05-08\","
                         "\"features\":[\"tokenize_credit_cards\"]},"
                         "\"clientApiUrl\":\"%s/merchants/%s/client_api\","
                         "\"environment\":\"development\",\"merchantId\":\"%s\","
                         "\"assetsUrl\":\"%s\",\"authUrl\":\"%s\",\"venmo\":\"off\","
                         "\"challenges\":[],\"threeDSecureEnabled\":false,"
                         "\"analytics\":{\"url\":\"%s/analytics\"},\"paypalEnabled\":false}",
                         base.data, fk->merchant_id, base.data, base.data, fk->merchant_id,
                         fk->merchant_id, base.data, base.data, base.data);
    lim_buf_reset(&tok);
    if (rc == 0 && version != 1)
        rc = fk_base64(&tok, json.data, json.len, 0);
    if (rc == 0) {
        xw_lit(w, "<client-token>");
        if (version == 1)
            xw_str(w, "value", json.data);
        else
            xw_str(w, "value", tok.data);
        xw_lit(w, "</client-token>");
    }
    lim_buf_free(&json);
    lim_buf_free(&base);
    lim_buf_free(&hdr);
    lim_buf_free(&pay);
    lim_buf_free(&tok);
    return rc == 0 ? 201 : 500;
}

/* ---- dispatch ------------------------------------------------------------------------------ */

int fk_gw_call(lim_fake_bt_t *fk, fk_ep_t ep, const fk_doc_t *doc, const char *arg, size_t arg_len,
               const char *host, size_t host_len)
{
    fk_xw_t w = {.b = &fk->out, .spans = fk->spans};
    size_t mark;
    int status;

    lim_buf_reset(&fk->out);
    /* Room for a transaction up front: the writer's appends then never reallocate. */
    if (lim_buf_reserve(&fk->out, 16 * 1024) != 0)
        return 500;
    xw_frag(&w, F_DECL);
    mark = fk->out.len;
    switch (ep) {
    case FK_EP_CLIENT_TOKEN:
        status = gw_client_token(fk, &w, doc, host, host_len);
        break;
    case FK_EP_CUSTOMER_CREATE:
        status = gw_customer_create(fk, &w, doc);
        break;
    case FK_EP_CUSTOMER_FIND:
        status = gw_customer_find(fk, &w, arg, arg_len);
        break;
    case FK_EP_SALE:
        status = gw_sale(fk, &w, doc);
        break;
    case FK_EP_FIND:
        status = gw_find(fk, &w, arg, arg_len);
        break;
    case FK_EP_VOID:
        status = gw_void(fk, &w, doc, arg, arg_len);
        break;
    case FK_EP_SUBMIT:
        status = gw_submit(fk, &w, doc, arg, arg_len);
        break;
    case FK_EP_REFUND:
        status = gw_refund(fk, &w, doc, arg, arg_len);
        break;
    case FK_EP_SEARCH_IDS:
        status = gw_search(fk, &w, doc, 1);
        break;
    case FK_EP_SEARCH:
        status = gw_search(fk, &w, doc, 0);
        break;
    default:
        status = gw_settle(fk, &w, ep, arg, arg_len);
        break;
    }
    fk->n_spans = w.n_spans;
    if (w.err != 0)
        status = 500;
    /* Statuses the SDKs do not parse go out with an empty body. */
    if (status != 200 && status != 201 && status != 422)
        lim_buf_reset(&fk->out);
    else if (fk->out.len == mark)
        lim_buf_reset(&fk->out);
    if (fk->out.len == 0)
        fk->n_spans = 0;
    return status;
}
