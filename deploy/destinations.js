'use strict';
// Everything serverless.yml deploys per destination, generated from one list:
// `custom.destinations` in serverless.yml. An entry gives the destination's wire name
// (as in domain::crm::DESTINATIONS and crm::destination::REGISTRY), its deliver
// function's SQS batching, and — for destinations that keep tokens — its token
// schedule. From it come: the ingest routes (POST/OPTIONS and the GET/HEAD pixel), the
// fanout's queue env vars and send permission, the delivery queue and its DLQ, the
// deliver function and its role, the token function, its schedule and role, the alarms,
// the dashboard and the outputs.
//
// Referenced from serverless.yml as ${file(./deploy/destinations.js):<part>}; each part
// is a function osls calls with the configuration resolver.

const secretArn = (name) => ({
  'Fn::Join': ['', ['arn:aws:secretsmanager:', { Ref: 'AWS::Region' }, ':', { Ref: 'AWS::AccountId' }, `:secret:/connect/${name}/*`]],
});
const arn = (id) => ({ 'Fn::GetAtt': [id, 'Arn'] });
const cap = (name) => name.charAt(0).toUpperCase() + name.slice(1);

async function list({ resolveConfigurationProperty }) {
  const entries = await resolveConfigurationProperty(['custom', 'destinations']);
  if (!Array.isArray(entries) || entries.length === 0) {
    throw new Error('custom.destinations must list the destinations (see deploy/destinations.js)');
  }
  const seen = new Set();
  return entries.map((d, i) => {
    if (!d || typeof d.name !== 'string' || !/^[a-z]+$/.test(d.name)) {
      throw new Error(`custom.destinations[${i}].name must be a lower-case wire name`);
    }
    if (seen.has(d.name)) throw new Error(`custom.destinations[${i}]: ${d.name} is listed twice`);
    seen.add(d.name);
    for (const key of ['batchSize', 'batchWindow', 'concurrency']) {
      if (!Number.isInteger(d[key]) || d[key] < 0) {
        throw new Error(`custom.destinations[${i}] (${d.name}).${key} must be a non-negative integer`);
      }
    }
    if (d.concurrency < 2) throw new Error(`custom.destinations[${i}] (${d.name}).concurrency must be ≥ 2 (SQS event source minimum)`);
    return { ...d, cap: cap(d.name) };
  });
}

// ingest: POST + OPTIONS on /{name}, GET + HEAD on the pixel /{name}/p.
async function ingestEvents(ctx) {
  const events = [];
  // The cloudfront front door reaches ingest through its function URL: no API routes.
  if ((await require('./front-door.js').door(ctx)) === 'cloudfront') return events;
  for (const d of await list(ctx)) {
    events.push({ http: { path: d.name, method: 'post' } });
    events.push({ http: { path: d.name, method: 'options' } });
    events.push({ http: { path: `${d.name}/p`, method: 'get' } });
    events.push({ http: { path: `${d.name}/p`, method: 'head' } });
  }
  return events;
}

async function fanoutEnvironment(ctx) {
  const env = {};
  for (const d of await list(ctx)) {
    env[`QUEUE_URL_${d.name.toUpperCase()}`] = { Ref: `${d.cap}Queue` };
    env[`DLQ_URL_${d.name.toUpperCase()}`] = { Ref: `${d.cap}Dlq` };
  }
  return env;
}

// The fanout sends to every delivery queue and DLQ (records too large for a message are
// dead-lettered on purpose).
async function fanoutQueueArns(ctx) {
  const arns = [];
  for (const d of await list(ctx)) arns.push(arn(`${d.cap}Queue`), arn(`${d.cap}Dlq`));
  return arns;
}

function deliverFunction(d) {
  const rotating = Boolean(d.rotatingSecret);
  const tokens = Boolean(d.tokenSchedule);
  const statements = [
    { Effect: 'Allow', Action: ['sqs:ReceiveMessage', 'sqs:DeleteMessage', 'sqs:ChangeMessageVisibility', 'sqs:GetQueueAttributes'], Resource: [arn(`${d.cap}Queue`)] },
    { Effect: 'Allow', Action: ['sqs:SendMessage'], Resource: [arn(`${d.cap}Dlq`)] },
  ];
  if (tokens) {
    statements.push({ Effect: 'Allow', Action: ['dynamodb:GetItem', 'dynamodb:PutItem', ...(rotating ? ['dynamodb:DeleteItem'] : [])], Resource: [arn('TokensTable')] });
  }
  statements.push(
    { Effect: 'Allow', Action: ['dynamodb:GetItem'], Resource: [arn('ClientsTable'), arn('RdStationConfigTable')] },
    { Effect: 'Allow', Action: ['secretsmanager:GetSecretValue', ...(rotating ? ['secretsmanager:PutSecretValue'] : [])], Resource: [secretArn(d.name)] },
    { Effect: 'Allow', Action: ['sns:Publish'], Resource: [{ Ref: 'AlertTopic' }] },
    { Effect: 'Allow', Action: ['dynamodb:Query'], Resource: [arn('SuppressionTable')] },
    { Effect: 'Allow', Action: ['secretsmanager:GetSecretValue'], Resource: [{ Ref: 'InstallationKeySecret' }] },
  );
  return {
    handler: 'bootstrap',
    description: `${d.name} delivery queue -> ${d.name}`,
    package: { artifact: 'dist/deliver.zip' },
    timeout: '${self:custom.deliverTimeout}',
    environment: { CRM: d.name, QUEUE_URL: { Ref: `${d.cap}Queue` }, DLQ_URL: { Ref: `${d.cap}Dlq` } },
    events: [{
      sqs: {
        arn: arn(`${d.cap}Queue`),
        batchSize: d.batchSize,
        maximumBatchingWindow: d.batchWindow,
        maximumConcurrency: d.concurrency,
        functionResponseType: 'ReportBatchItemFailures',
      },
    }],
    iamRoleStatements: statements,
  };
}

function tokenFunction(d) {
  const rotating = Boolean(d.rotatingSecret);
  return {
    handler: 'bootstrap',
    description: `refresh the ${d.name} tokens that are due`,
    package: { artifact: 'dist/token.zip' },
    timeout: 60,
    environment: { CRM: d.name },
    // No input: the EventBridge envelope reaches the handler intact.
    events: [{ schedule: { rate: d.tokenSchedule } }],
    iamRoleStatements: [
      { Effect: 'Allow', Action: ['secretsmanager:GetSecretValue', 'secretsmanager:PutSecretValue'], Resource: [secretArn(d.name)] },
      { Effect: 'Allow', Action: ['dynamodb:GetItem', 'dynamodb:PutItem', ...(rotating ? ['dynamodb:DeleteItem'] : [])], Resource: [arn('TokensTable')] },
      { Effect: 'Allow', Action: ['dynamodb:Query', 'dynamodb:Scan'], Resource: [arn('ClientsTable')] },
      { Effect: 'Allow', Action: ['sns:Publish'], Resource: [{ Ref: 'AlertTopic' }] },
    ],
  };
}

async function functions(ctx) {
  const out = {};
  for (const d of await list(ctx)) {
    out[`deliver${d.cap}`] = deliverFunction(d);
    if (d.tokenSchedule) out[`token${d.cap}`] = tokenFunction(d);
  }
  return out;
}

const errorRateAlarm = (fn, logical) => ({
  Type: 'AWS::CloudWatch::Alarm',
  Properties: {
    AlarmDescription: `${fn}: more than 5 % of invocations failed over 5 minutes`,
    ComparisonOperator: 'GreaterThanThreshold', Threshold: 5, EvaluationPeriods: 1, TreatMissingData: 'notBreaching',
    AlarmActions: [{ Ref: 'AlertTopic' }], OKActions: [{ Ref: 'AlertTopic' }],
    Metrics: [
      { Id: 'errors', ReturnData: false, MetricStat: { Metric: { Namespace: 'AWS/Lambda', MetricName: 'Errors', Dimensions: [{ Name: 'FunctionName', Value: { Ref: logical } }] }, Period: 300, Stat: 'Sum' } },
      { Id: 'invocations', ReturnData: false, MetricStat: { Metric: { Namespace: 'AWS/Lambda', MetricName: 'Invocations', Dimensions: [{ Name: 'FunctionName', Value: { Ref: logical } }] }, Period: 300, Stat: 'Sum' } },
      { Id: 'rate', ReturnData: true, Label: 'error rate %', Expression: '100 * errors / MAX([invocations, 1])' },
    ],
  },
});

const countAlarm = (description, namespace, metric, dimension, statistic) => ({
  Type: 'AWS::CloudWatch::Alarm',
  Properties: {
    AlarmDescription: description, Namespace: namespace, MetricName: metric, Dimensions: [dimension],
    Statistic: statistic, Period: 300, EvaluationPeriods: 1, Threshold: 0, ComparisonOperator: 'GreaterThanThreshold',
    TreatMissingData: 'notBreaching', AlarmActions: [{ Ref: 'AlertTopic' }],
  },
});

// One dashboard per destination: the deliver metrics (EMF, namespace Connect) by client.
function dashboard(d, stage) {
  const metrics = [
    ['Delivered', 'Sum'], ['Retried', 'Sum'], ['Throttled', 'Sum'], ['DeadLettered', 'Sum'], ['DeliveryLatency', 'p99'],
  ];
  const widgets = metrics.map(([metric, stat], i) => ({
    type: 'metric', x: (i % 3) * 8, y: Math.floor(i / 3) * 6, width: 8, height: 6,
    properties: {
      title: `${d.name}: ${metric}`, region: '__REGION__', stat, period: 60,
      metrics: [[{ expression: `SEARCH('{Connect,crm,clientId} crm="${d.name}" MetricName="${metric}"', '${stat}', 60)`, id: `m${i}` }]],
    },
  }));
  const pieces = JSON.stringify({ widgets }).split('__REGION__');
  const joined = [];
  pieces.forEach((p, i) => {
    if (i > 0) joined.push({ Ref: 'AWS::Region' });
    joined.push(p);
  });
  return {
    Type: 'AWS::CloudWatch::Dashboard',
    Properties: { DashboardName: `connect-${d.name}-${stage}`, DashboardBody: { 'Fn::Join': ['', joined] } },
  };
}

async function resources(ctx) {
  const stage = await ctx.resolveVariable('sls:stage');
  const Resources = {};
  const Outputs = {};
  for (const d of await list(ctx)) {
    Resources[`${d.cap}Dlq`] = { Type: 'AWS::SQS::Queue', Properties: { QueueName: `connect-${d.name}-dlq-${stage}`, MessageRetentionPeriod: 1209600, SqsManagedSseEnabled: true } };
    Resources[`${d.cap}Queue`] = {
      Type: 'AWS::SQS::Queue',
      Properties: {
        QueueName: `connect-${d.name}-delivery-${stage}`, VisibilityTimeout: 360, MessageRetentionPeriod: 345600, SqsManagedSseEnabled: true,
        RedrivePolicy: { deadLetterTargetArn: arn(`${d.cap}Dlq`), maxReceiveCount: 1000 },
      },
    };
    Resources[`Deliver${d.cap}ErrorRateAlarm`] = errorRateAlarm(`deliver${d.cap}`, `Deliver${d.cap}LambdaFunction`);
    if (d.tokenSchedule) {
      Resources[`Token${d.cap}ErrorRateAlarm`] = errorRateAlarm(`token${d.cap}`, `Token${d.cap}LambdaFunction`);
      Resources[`Token${d.cap}ErrorsAlarm`] = countAlarm(`token ${d.cap}: the token refresh failed`, 'AWS/Lambda', 'Errors', { Name: 'FunctionName', Value: { Ref: `Token${d.cap}LambdaFunction` } }, 'Sum');
    }
    Resources[`${d.cap}DlqDepthAlarm`] = countAlarm(`${d.cap}Dlq: messages are waiting (connect dlq list / peek / redrive)`, 'AWS/SQS', 'ApproximateNumberOfMessagesVisible', { Name: 'QueueName', Value: { 'Fn::GetAtt': [`${d.cap}Dlq`, 'QueueName'] } }, 'Maximum');
    Resources[`${d.cap}Dashboard`] = dashboard(d, stage);
    Outputs[`${d.cap}QueueUrl`] = { Value: { Ref: `${d.cap}Queue` } };
    Outputs[`${d.cap}DlqUrl`] = { Value: { Ref: `${d.cap}Dlq` } };
  }
  return { Resources, Outputs };
}

module.exports = { ingestEvents, fanoutEnvironment, fanoutQueueArns, functions, resources };
