-- Built-in templates for order.refunded (a refund of a confirmed order was paid back;
-- docs/saga.md, "Refunds"), replaceable with UpsertTemplate like the others.
INSERT INTO templates (id, event_type, channel, locale, subject, body, enabled, updated_at) VALUES
 ('default-order-refunded-log', 'order.refunded', 'LOG', '', 'Order {{order_id}} refunded', 'Order {{order_id}} of customer {{customer_id}}: refund {{refund_id}} of {{amount.amount_minor}} {{amount.currency_code}} paid back ({{reason}}).', 1, 0),
 ('default-order-refunded-webhook', 'order.refunded', 'WEBHOOK', '', 'Order {{order_id}} refunded', 'Order {{order_id}}: {{amount.amount_minor}} {{amount.currency_code}} refunded ({{reason}}).', 1, 0),
 ('default-order-refunded-email', 'order.refunded', 'EMAIL', '', 'Your refund for order {{order_id}}', 'We refunded {{amount.amount_minor}} {{amount.currency_code}} (minor units) of your order {{order_id}} to your card: {{reason}}.', 1, 0);
