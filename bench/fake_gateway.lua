-- bench/fake_gateway.lua: wrk script for bench/fake_gateway.sh. Every request is a Braintree
-- sale (the Python SDK's XML form, submit_for_settlement) with Basic auth, X-ApiVersion: 6 and
-- an order id unique to the run (ORDER_PREFIX from the environment, then a per-thread counter).

local auth = os.getenv("FAKE_AUTH") or "ZmFrZV9wdWJsaWM6ZmFrZV9wcml2YXRl"
local prefix = os.getenv("ORDER_PREFIX") or tostring(os.time())
local amount = os.getenv("SALE_AMOUNT") or "10.00"

wrk.method = "POST"
wrk.headers["Authorization"] = "Basic " .. auth
wrk.headers["X-ApiVersion"] = "6"
wrk.headers["Content-Type"] = "application/xml"
wrk.headers["Accept"] = "application/xml"
wrk.headers["Accept-Encoding"] = "gzip"

local threads = 0
function setup(thread)
    thread:set("tid", threads)
    threads = threads + 1
end

local n = 0
local head, tail

function init(args)
    local tid = tid or 0
    head = '<transaction><amount>' .. amount .. '</amount><payment_method_nonce>fake-valid-nonce'
        .. '</payment_method_nonce><order_id>' .. prefix .. '-' .. tid .. '-'
    tail = '</order_id><options><submit_for_settlement type="boolean">true'
        .. '</submit_for_settlement></options><type>sale</type></transaction>'
end

function request()
    n = n + 1
    return wrk.format(nil, nil, nil, head .. n .. tail)
end
