-- The demo's sample shop, made on the source; `ferry export schema` and `ferry import
-- schema` make it on the target.
CREATE TABLE customers (
    id         bigserial PRIMARY KEY,
    email      text NOT NULL,
    name       text NOT NULL,
    country    char(2),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE products (
    id    bigserial PRIMARY KEY,
    sku   varchar(16) NOT NULL,
    title text NOT NULL,
    price numeric(10,2) NOT NULL,
    stock integer NOT NULL,
    attrs jsonb
);
CREATE TABLE orders (
    id          bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers (id),
    status      text NOT NULL,
    total       numeric(12,2) NOT NULL DEFAULT 0,
    placed_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE order_items (
    id         bigserial PRIMARY KEY,
    order_id   bigint NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    product_id bigint NOT NULL REFERENCES products (id),
    qty        integer NOT NULL,
    price      numeric(10,2) NOT NULL
);
CREATE UNIQUE INDEX products_sku ON products (sku);
CREATE INDEX orders_customer ON orders (customer_id);
CREATE INDEX order_items_order ON order_items (order_id);
COMMENT ON TABLE orders IS 'one row per order; items in order_items';
