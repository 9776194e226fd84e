-- Permissions and grants of the utility's other modules: master data and bulk creation, installation
-- dispatch, price changes, valve wells and regulator boxes, warehouse, repairs, SMS, office and system
-- settings; and the storekeeper's role. meterhub_access_defaults() (re-run by tests after emptying the
-- tables) now runs the console's defaults of 0010 and then these.
ALTER FUNCTION meterhub_access_defaults() RENAME TO meterhub_console_access_defaults;

CREATE FUNCTION meterhub_access_defaults() RETURNS void LANGUAGE sql AS $$
SELECT meterhub_console_access_defaults();
INSERT INTO permission (code, name_zh, name_en) VALUES
    ('billing.tariff', '调整气价', 'Add gas price periods to tariffs'),
    ('masterdata.view', '查看基础信息', 'View master data'),
    ('masterdata.edit', '维护基础信息', 'Edit master data'),
    ('masterdata.bulk', '批量建档', 'Bulk creation from Excel'),
    ('install.dispatch', '分配安装派工', 'Dispatch installations'),
    ('facilities.view', '查看阀井调压箱', 'View valve wells and regulator boxes'),
    ('facilities.edit', '维护阀井调压箱', 'Edit valve wells, regulator boxes and their records'),
    ('warehouse.view', '查看仓库', 'View the warehouse'),
    ('warehouse.edit', '出入库', 'Stock in and out; warehouses, items and suppliers'),
    ('repairs.view', '查看维修', 'View repairs'),
    ('repairs.edit', '登记与完成维修', 'Register and complete repairs'),
    ('repairs.dispatch', '维修派工与提成', 'Dispatch repairs and set commissions'),
    ('sms.view', '查看短信', 'View SMS history'),
    ('sms.send', '发送短信', 'Send SMS'),
    ('sms.templates', '短信模板与自动通知', 'Edit SMS templates and automatic notices'),
    ('office.view', '查看办公文档', 'View documents, plans and news'),
    ('office.edit', '发布文档、计划与新闻', 'Publish documents, plans and news'),
    ('settings.edit', '参数配置', 'Edit system settings and print templates')
ON CONFLICT DO NOTHING;
INSERT INTO role (code, name_zh, name_en, builtin) VALUES ('storekeeper', '仓管员', 'Storekeeper', true)
ON CONFLICT DO NOTHING;
INSERT INTO role_permission (role, permission)
    SELECT 'admin', code FROM permission
    UNION ALL SELECT 'cashier', p FROM unnest(ARRAY['office.view']) p
    UNION ALL SELECT 'billing_clerk', p FROM unnest(ARRAY['masterdata.view', 'masterdata.edit', 'masterdata.bulk',
        'install.dispatch', 'repairs.view', 'repairs.edit', 'sms.view', 'sms.send', 'office.view']) p
    UNION ALL SELECT 'meter_reader', p FROM unnest(ARRAY['office.view']) p
    UNION ALL SELECT 'engineer', p FROM unnest(ARRAY['masterdata.view', 'facilities.view', 'facilities.edit',
        'warehouse.view', 'repairs.view', 'repairs.edit', 'office.view']) p
    UNION ALL SELECT 'auditor', p FROM unnest(ARRAY['masterdata.view', 'facilities.view', 'warehouse.view',
        'repairs.view', 'sms.view', 'office.view']) p
    UNION ALL SELECT 'supervisor', p FROM unnest(ARRAY['billing.tariff', 'masterdata.view', 'masterdata.edit',
        'masterdata.bulk', 'install.dispatch', 'facilities.view', 'facilities.edit', 'warehouse.view',
        'warehouse.edit', 'repairs.view', 'repairs.edit', 'repairs.dispatch', 'sms.view', 'sms.send',
        'sms.templates', 'office.view', 'office.edit']) p
    UNION ALL SELECT 'storekeeper', p FROM unnest(ARRAY['meters.view', 'masterdata.view', 'warehouse.view',
        'warehouse.edit', 'repairs.view', 'office.view']) p
ON CONFLICT DO NOTHING;
$$;
SELECT meterhub_access_defaults();
