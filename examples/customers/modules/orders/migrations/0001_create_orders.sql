CREATE TABLE orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id bigint NOT NULL,   -- the customers module's id: no foreign key across modules
    total numeric(12, 2) NOT NULL
);

CREATE TABLE customer_snapshots (
    customer_id bigint PRIMARY KEY,
    name text NOT NULL,
    version bigint NOT NULL
);
