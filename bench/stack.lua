-- bench/stack.lua: wrk script of bench/cards.sh, tokens.sh and loads.sh.
--
-- Rotates over the lines of KEYS_FILE ("key user_id card_id"): request i goes to line i mod n
-- (in file order, starting at line OFFSET), so every user is reached once per n requests.
-- SCENARIO:
--   card   GET /cards/<card>/                      (Authorization: Bearer <key>)
--   token  POST /tokens/ with an empty JSON object
--   load   POST /cards/<card>/load/ with {"nonce": NONCE, "amount": AMOUNT}
-- Requests are built once in init(). Every answer's status is counted; done() prints one line
-- "statuses: 200=N ..." that the report checks (wrk itself only counts non-2xx/3xx).

local scenario = os.getenv("SCENARIO") or "card"
local keys_file = os.getenv("KEYS_FILE") or error("KEYS_FILE is not set")
local amount = os.getenv("AMOUNT") or "0.01"
local nonce = os.getenv("NONCE") or "fake-valid-nonce"
local offset = tonumber(os.getenv("OFFSET") or "0")

local threads = {}
function setup(thread)
    table.insert(threads, thread)
end

local reqs = {}
local n = 0
local i = 0
counts = {}

function init(args)
    local body
    if scenario == "load" then
        body = '{"nonce": "' .. nonce .. '", "amount": "' .. amount .. '"}'
    elseif scenario == "token" then
        body = "{}"
    end
    for line in io.lines(keys_file) do
        local key, user, card = line:match("^(%S+)%s+(%S+)%s+(%S+)")
        if key then
            local headers = { ["Authorization"] = "Bearer " .. key }
            local r
            if scenario == "card" then
                r = wrk.format("GET", "/cards/" .. card .. "/", headers)
            elseif scenario == "token" then
                headers["Content-Type"] = "application/json"
                r = wrk.format("POST", "/tokens/", headers, body)
            else
                headers["Content-Type"] = "application/json"
                r = wrk.format("POST", "/cards/" .. card .. "/load/", headers, body)
            end
            n = n + 1
            reqs[n] = r
        end
    end
    if n == 0 then
        error("no keys in " .. keys_file)
    end
    i = offset % n
end

function request()
    i = i + 1
    if i > n then
        i = 1
    end
    return reqs[i]
end

function response(status, headers, body)
    local k = tostring(status)
    counts[k] = (counts[k] or 0) + 1
end

function done(summary, latency, requests)
    local total = {}
    for _, t in ipairs(threads) do
        local c = t:get("counts")
        if c then
            for k, v in pairs(c) do
                total[k] = (total[k] or 0) + v
            end
        end
    end
    local parts = {}
    for k, v in pairs(total) do
        table.insert(parts, k .. "=" .. v)
    end
    table.sort(parts)
    io.write("statuses: " .. table.concat(parts, " ") .. "\n")
end
