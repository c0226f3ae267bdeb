-- The demo schema `homeport dev` applies to every shard primary when no --schema is given.
-- Every table carries the user id, so each row lives in its owner's home shard.
CREATE TABLE IF NOT EXISTS notes (
    id         bigserial PRIMARY KEY,
    user_id    text        NOT NULL,
    body       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS notes_user_id ON notes (user_id);

CREATE TABLE IF NOT EXISTS accounts (
    user_id    text PRIMARY KEY,
    balance    numeric(14, 2) NOT NULL DEFAULT 0,
    updated_at timestamptz    NOT NULL DEFAULT now()
);
