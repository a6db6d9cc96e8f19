-- The demo's sample shop. Run on the source (with data.sql) and on the target (schema
-- only: Ferry moves data, the schema is created beforehand).
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
