-- Discounts priced by campaign (docs/saga.md): each line's discount, the campaigns that gave
-- them (comma-separated ids), and whether campaign could not be asked (the order then went at
-- list price with no discount). Existing orders had no discounts: the defaults say so.
ALTER TABLE orders ADD COLUMN applied_campaign_ids TEXT NOT NULL DEFAULT '';
ALTER TABLE orders ADD COLUMN discounts_unavailable BIGINT NOT NULL DEFAULT 0;
ALTER TABLE order_lines ADD COLUMN discount_minor BIGINT NOT NULL DEFAULT 0;
