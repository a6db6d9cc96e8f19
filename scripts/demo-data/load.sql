-- pgbench script: one shop transaction (a new order with an item, a stock update, a
-- status change, a cancelled order's items removed).
\set c random(1, 5000)
\set p random(1, 500)
\set o random(1, 40000)
BEGIN;
INSERT INTO orders (customer_id, status) VALUES (:c, 'new') RETURNING id AS new_order \gset
INSERT INTO order_items (order_id, product_id, qty, price)
    SELECT :new_order, id, 1 + :c % 3, price FROM products WHERE id = :p;
UPDATE orders SET total = (SELECT coalesce(sum(qty * price), 0) FROM order_items WHERE order_id = :new_order)
    WHERE id = :new_order;
UPDATE products SET stock = stock - 1 WHERE id = :p;
UPDATE orders SET status = 'shipped' WHERE id = :o AND status = 'paid';
DELETE FROM order_items WHERE order_id = :o AND :c % 10 = 0;
END;
