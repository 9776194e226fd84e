-- A removed meter taken back into the warehouse (a stock-in document of kind `return`) is in stock again
-- and can be installed on another account; the taking back is one more entry of its action history.
ALTER TABLE meter_action DROP CONSTRAINT meter_action_action_check;
ALTER TABLE meter_action ADD CONSTRAINT meter_action_action_check CHECK (action IN (
    'install', 'replace_out', 'replace_in', 'suspend', 'resume', 'remove', 'return'));
