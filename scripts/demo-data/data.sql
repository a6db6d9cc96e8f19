-- Sample data for the source (REPLICA IDENTITY FULL, which Ferry needs, is set by
-- `ferry prepare source` in the demo).
INSERT INTO customers (email, name, country)
    SELECT 'customer' || g || '@example.com', 'Customer ' || g, (ARRAY['DE','FR','US','IN','BR'])[g % 5 + 1]
    FROM generate_series(1, 5000) g;
INSERT INTO products (sku, title, price, stock, attrs)
    SELECT 'SKU-' || lpad(g::text, 6, '0'), 'Product ' || g, (g % 200) + 0.99, 1000,
           jsonb_build_object('color', (ARRAY['red','green','blue'])[g % 3 + 1], 'weight', g % 17)
    FROM generate_series(1, 500) g;
INSERT INTO orders (customer_id, status, total)
    SELECT g % 5000 + 1, (ARRAY['new','paid','shipped'])[g % 3 + 1], 0 FROM generate_series(1, 40000) g;
INSERT INTO order_items (order_id, product_id, qty, price)
    SELECT g % 40000 + 1, g % 500 + 1, g % 4 + 1, (g % 200) + 0.99 FROM generate_series(1, 80000) g;
UPDATE orders o SET total = s.total
    FROM (SELECT order_id, sum(qty * price) AS total FROM order_items GROUP BY order_id) s
    WHERE s.order_id = o.id;
