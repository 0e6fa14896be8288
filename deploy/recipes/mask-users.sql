-- clonebot recipe: mask the personal data of a users table in a clone's PostgreSQL.
--
-- Run by an on-clone hook in the clone's database node, never in the source (see README.md
-- beside this file):
--   psql -v ON_ERROR_STOP=1 -v mask_key="$CLONEBOT_MASK_KEY" -f mask-users.sql
-- Optional: -v table=customers -v email_column=mail -v name_column=full_name
-- (defaults: users, email, name; -v name_column= empty leaves names alone).
--
-- Every email becomes u<20 hex digits>@example.invalid and every name a made-up "First Last",
-- both taken from an HMAC-like SHA-256 of the value under mask_key: the same value gives the
-- same fake one in every clone made with the same key (joins and reports across clones still
-- line up), different emails give different fake ones (80 bits: a UNIQUE column stays valid;
-- should two ever meet, the UPDATE fails and so does the clone: never a silent duplicate), and
-- without the key nobody can test a guess ("was alice@example.com a user?") against a clone.
-- NULLs stay NULL. Only PostgreSQL's built-in functions are used (11 or later): nothing to
-- install in the image, nothing left in the clone's schema (the functions are pg_temp's).

\set ON_ERROR_STOP on
\if :{?mask_key}
\else
  \set mask_key ''
\endif
\if :{?table}
\else
  \set table users
\endif
\if :{?email_column}
\else
  \set email_column email
\endif
\if :{?name_column}
\else
  \set name_column name
\endif

BEGIN;

SELECT length(:'mask_key') >= 16 AS key_ok \gset
\if :key_ok
\else
  \echo 'mask-users.sql: run psql with -v mask_key=<at least 16 characters>, the same in every clone'
  SELECT 1 / 0 AS no_mask_key;
\endif

CREATE FUNCTION pg_temp.mask_digest(value text, key text) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT AS $$
  -- the key on both sides of the value: the shape of HMAC without pgcrypto
  SELECT sha256(convert_to(key || E'\x1f' || value || E'\x1f' || key, 'UTF8'))
$$;

CREATE FUNCTION pg_temp.fake_email(value text, key text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$
  SELECT 'u' || left(encode(pg_temp.mask_digest(value, key), 'hex'), 20) || '@example.invalid'
$$;

CREATE FUNCTION pg_temp.fake_name(value text, key text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$
  WITH d AS (SELECT pg_temp.mask_digest(value, key) AS b),
  firsts AS (SELECT ARRAY['Ada','Ben','Chloé','Dmitri','Emma','Farid','Grace','Hugo','Ines',
    'Jonas','Kaito','Lena','Mateo','Nora','Omar','Priya','Quinn','Rosa','Sami','Tara',
    'Uma','Viktor','Wen','Yara','Zoe','Aiko','Bruno','Carmen','Diego','Elif','Finn','Gita'] AS a),
  lasts AS (SELECT ARRAY['Abbott','Bauer','Costa','Dubois','Eriksen','Fischer','Garcia','Haas',
    'Ito','Jensen','Kowalski','Larsen','Moreau','Novak','Okafor','Petrov','Quist','Rossi',
    'Silva','Tanaka','Usman','Vogel','Weber','Xu','Yilmaz','Zhang','Andersen','Becker',
    'Chen','Duarte','Evans','Fontaine'] AS a)
  SELECT firsts.a[1 + (get_byte(d.b, 0) * 256 + get_byte(d.b, 1)) % cardinality(firsts.a)]
         || ' ' ||
         lasts.a[1 + (get_byte(d.b, 2) * 256 + get_byte(d.b, 3)) % cardinality(lasts.a)]
  FROM d, firsts, lasts
$$;

UPDATE :"table" SET :"email_column" = pg_temp.fake_email(:"email_column", :'mask_key');

\if :{?name_column}
SELECT :'name_column' <> '' AS has_name \gset
\if :has_name
UPDATE :"table" SET :"name_column" = pg_temp.fake_name(:"name_column", :'mask_key');
\endif
\endif

COMMIT;

-- the old rows stay in the table's files as dead tuples until vacuumed: rewrite it now
VACUUM FULL :"table";
