-- How a counter payment was paid (收款方式): 现金, 银行卡 (POS), 转账, 微信, 支付宝, 支票. Payments recorded
-- before this column existed, and bank withholding payments (whose channel says how), have none.
ALTER TABLE payment ADD COLUMN method text
    CHECK (method IN ('cash', 'card', 'transfer', 'wechat', 'alipay', 'cheque'));
