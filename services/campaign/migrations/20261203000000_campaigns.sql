-- Campaigns, their promo codes, redemptions and the product -> category map learned from
-- product's events (portable SQL: the same file runs on Postgres and SQLite). Times are Unix
-- microseconds (0 = not set); money is integer minor units; flags are 0/1.

-- A campaign. `spec` is the encoded campaign.v1.Campaign as created (base64): name, window,
-- codes, rules, stacking and limits; the columns beside it are what queries and the counters
-- need. redemption_count and budget_used_minor count held, reserved and consumed redemptions.
CREATE TABLE campaigns (
    id                  TEXT   PRIMARY KEY,
    spec                TEXT   NOT NULL,
    automatic           BIGINT NOT NULL,
    start_us            BIGINT NOT NULL,
    end_us              BIGINT NOT NULL,
    ended_us            BIGINT NOT NULL DEFAULT 0,
    max_redemptions     BIGINT NOT NULL,
    max_per_customer    BIGINT NOT NULL,
    budget_currency     TEXT   NOT NULL,
    budget_minor        BIGINT NOT NULL,
    redemption_count    BIGINT NOT NULL DEFAULT 0,
    budget_used_minor   BIGINT NOT NULL DEFAULT 0,
    created_us          BIGINT NOT NULL,
    updated_us          BIGINT NOT NULL,
    CHECK (max_redemptions = 0 OR redemption_count <= max_redemptions),
    CHECK (budget_minor = 0 OR budget_used_minor <= budget_minor),
    CHECK (redemption_count >= 0 AND budget_used_minor >= 0)
);
CREATE INDEX campaigns_active ON campaigns (automatic, ended_us, start_us);
CREATE INDEX campaigns_by_time ON campaigns (created_us, id);

-- Promo codes (upper case); a code may unlock several campaigns.
CREATE TABLE campaign_codes (
    code        TEXT NOT NULL,
    campaign_id TEXT NOT NULL REFERENCES campaigns (id),
    PRIMARY KEY (code, campaign_id)
);

-- One redemption per campaign and order: HELD (PriceCart with reserve; expires_us set),
-- RESERVED (order.created seen), CONSUMED (order.confirmed), RELEASED (order.cancelled, or
-- the hold expired). discount_minor is what it took from the budget.
CREATE TABLE redemptions (
    campaign_id    TEXT   NOT NULL REFERENCES campaigns (id),
    order_id       TEXT   NOT NULL,
    customer_id    TEXT   NOT NULL,
    status         TEXT   NOT NULL,
    discount_minor BIGINT NOT NULL,
    expires_us     BIGINT NOT NULL,
    created_us     BIGINT NOT NULL,
    updated_us     BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, order_id)
);
CREATE INDEX redemptions_by_order ON redemptions (order_id);
CREATE INDEX redemptions_due ON redemptions (status, expires_us);

-- Redemptions per customer held, reserved or consumed (the per-customer limit's counter).
CREATE TABLE customer_redemptions (
    campaign_id TEXT   NOT NULL REFERENCES campaigns (id),
    customer_id TEXT   NOT NULL,
    used        BIGINT NOT NULL CHECK (used >= 0),
    PRIMARY KEY (campaign_id, customer_id)
);

-- The category of each product, from product.created / product.updated / product.deleted:
-- category-scoped rules reach a cart line by it when the line names no category.
CREATE TABLE product_categories (
    product_id  TEXT   PRIMARY KEY,
    category_id TEXT   NOT NULL,
    updated_us  BIGINT NOT NULL
);
