'use strict';
// The public front door of ingest, chosen by `custom.frontDoor` in serverless.yml
// (`--front-door rest|cloudfront`). Both keep the WAF web ACL (`WebAcl`) in front of
// every request; they differ in price per request and in what callers must send.
//
//   rest (default)  API Gateway REST API (regional) + WAF → ingest. API Gateway events;
//                   stage throttling (custom.apiRateLimit / apiBurstLimit).
//   cloudfront      CloudFront + WAF → the ingest function URL (IAM auth, origin access
//                   control: only this distribution can call it). Function URL events
//                   (INGEST_EVENT_SOURCE=function-url); about a third of the REST door's
//                   price per request (BENCHMARKS.md). Caveats: the stack must be in
//                   us-east-1 (a CloudFront web ACL lives there); a POST must carry
//                   `x-amz-content-sha256` (hex SHA-256 of its body: Lambda does not take
//                   unsigned payloads through origin access control) — the GTM
//                   template's pixel is a GET and needs nothing.
//
// An HTTP API is not offered: WAF cannot be attached to it.
//
// Referenced from serverless.yml as ${file(./deploy/front-door.js):<part>}.

const DOORS = ['rest', 'cloudfront'];
// CloudFront's managed cache policy "CachingDisabled": every request reaches ingest.
const CACHING_DISABLED = '4135ea2d-6df8-44a3-9df3-4b5a84be39ad';
// What ingest reads of a request (origin checks, CORS preflight, bots, request id, the
// viewer's address) and the payload hash origin access control signs POSTs with.
// Cookies and every other header stay at the edge.
const FORWARDED_HEADERS = [
  'Origin',
  'Referer',
  'User-Agent',
  'Content-Type',
  'Access-Control-Request-Method',
  'Access-Control-Request-Headers',
  'X-Request-Id',
  'CloudFront-Viewer-Address',
  'x-amz-content-sha256',
];

async function door({ resolveConfigurationProperty }) {
  const value = await resolveConfigurationProperty(['custom', 'frontDoor']);
  if (!DOORS.includes(value)) {
    throw new Error(`custom.frontDoor (--front-door) must be one of ${DOORS.join(', ')}, not ${JSON.stringify(value)}`);
  }
  if (value === 'cloudfront') {
    const region = await resolveConfigurationProperty(['provider', 'region']);
    if (region !== 'us-east-1') {
      throw new Error(`--front-door cloudfront needs the stack in us-east-1 (a CloudFront web ACL can only be created there), not ${region}`);
    }
  }
  return value;
}

// INGEST_EVENT_SOURCE of the ingest function: the event shape its front door sends.
async function ingestEventSource(ctx) {
  return (await door(ctx)) === 'cloudfront' ? 'function-url' : 'apigateway';
}

// The web ACL's scope: REGIONAL for API Gateway, CLOUDFRONT for a distribution.
async function wafScope(ctx) {
  return (await door(ctx)) === 'cloudfront' ? 'CLOUDFRONT' : 'REGIONAL';
}

function alarm(description, namespace, metric, dimensions, statistic, threshold) {
  return {
    Type: 'AWS::CloudWatch::Alarm',
    Properties: {
      AlarmDescription: description,
      Namespace: namespace,
      MetricName: metric,
      Dimensions: dimensions,
      Statistic: statistic,
      Period: 300,
      EvaluationPeriods: 1,
      Threshold: threshold,
      ComparisonOperator: 'GreaterThanThreshold',
      TreatMissingData: 'notBreaching',
      AlarmActions: [{ Ref: 'AlertTopic' }],
    },
  };
}

async function restResources(ctx) {
  const stage = await ctx.resolveVariable('sls:stage');
  const instance = await ctx.resolveVariable('sls:instanceId');
  return {
    Resources: {
      WebAclAssociation: {
        Type: 'AWS::WAFv2::WebACLAssociation',
        DependsOn: [`ApiGatewayDeployment${instance}`],
        Properties: {
          WebACLArn: { 'Fn::GetAtt': ['WebAcl', 'Arn'] },
          ResourceArn: { 'Fn::Join': ['', ['arn:aws:apigateway:', { Ref: 'AWS::Region' }, '::/restapis/', { Ref: 'ApiGatewayRestApi' }, `/stages/${stage}`]] },
        },
      },
      Api5xxAlarm: alarm('API Gateway answered 5XX', 'AWS/ApiGateway', '5XXError', [{ Name: 'ApiName', Value: `${stage}-connect` }], 'Sum', 0),
    },
    Outputs: {
      ApiUrl: {
        Value: { 'Fn::Join': ['', ['https://', { Ref: 'ApiGatewayRestApi' }, '.execute-api.', { Ref: 'AWS::Region' }, `.amazonaws.com/${stage}`]] },
      },
    },
  };
}

async function cloudfrontResources(ctx) {
  const stage = await ctx.resolveVariable('sls:stage');
  const distributionArn = {
    'Fn::Join': ['', ['arn:aws:cloudfront::', { Ref: 'AWS::AccountId' }, ':distribution/', { Ref: 'IngestDistribution' }]],
  };
  const cloudfrontMay = (action) => ({
    Type: 'AWS::Lambda::Permission',
    Properties: {
      Action: action,
      FunctionName: { 'Fn::GetAtt': ['IngestLambdaFunction', 'Arn'] },
      Principal: 'cloudfront.amazonaws.com',
      SourceArn: distributionArn,
      ...(action === 'lambda:InvokeFunctionUrl' ? { FunctionUrlAuthType: 'AWS_IAM' } : {}),
    },
  });
  return {
    Resources: {
      // IAM auth: a request that did not come through the distribution (signed by its
      // origin access control) is refused by Lambda before ingest runs.
      IngestFunctionUrl: {
        Type: 'AWS::Lambda::Url',
        Properties: {
          TargetFunctionArn: { 'Fn::GetAtt': ['IngestLambdaFunction', 'Arn'] },
          AuthType: 'AWS_IAM',
          InvokeMode: 'BUFFERED',
        },
      },
      IngestUrlInvokePermission: cloudfrontMay('lambda:InvokeFunctionUrl'),
      IngestFunctionInvokePermission: cloudfrontMay('lambda:InvokeFunction'),
      IngestOriginAccessControl: {
        Type: 'AWS::CloudFront::OriginAccessControl',
        Properties: {
          OriginAccessControlConfig: {
            Name: `connect-${stage}-ingest`,
            Description: 'Connect: CloudFront signs its requests to the ingest function URL',
            OriginAccessControlOriginType: 'lambda',
            SigningBehavior: 'always',
            SigningProtocol: 'sigv4',
          },
        },
      },
      IngestOriginRequestPolicy: {
        Type: 'AWS::CloudFront::OriginRequestPolicy',
        Properties: {
          OriginRequestPolicyConfig: {
            Name: `connect-${stage}-ingest`,
            Comment: 'What ingest reads: its headers, and the pixel query d',
            HeadersConfig: { HeaderBehavior: 'whitelist', Headers: FORWARDED_HEADERS },
            CookiesConfig: { CookieBehavior: 'none' },
            QueryStringsConfig: { QueryStringBehavior: 'whitelist', QueryStrings: ['d'] },
          },
        },
      },
      // No access logs: the pixel's query holds an email.
      IngestDistribution: {
        Type: 'AWS::CloudFront::Distribution',
        Properties: {
          DistributionConfig: {
            Enabled: true,
            Comment: `connect-${stage}: GTM events to ingest`,
            HttpVersion: 'http2and3',
            PriceClass: 'PriceClass_100',
            WebACLId: { 'Fn::GetAtt': ['WebAcl', 'Arn'] },
            Origins: [
              {
                Id: 'ingest',
                DomainName: { 'Fn::Select': [2, { 'Fn::Split': ['/', { 'Fn::GetAtt': ['IngestFunctionUrl', 'FunctionUrl'] }] }] },
                OriginAccessControlId: { 'Fn::GetAtt': ['IngestOriginAccessControl', 'Id'] },
                CustomOriginConfig: { OriginProtocolPolicy: 'https-only', OriginSSLProtocols: ['TLSv1.2'] },
              },
            ],
            DefaultCacheBehavior: {
              TargetOriginId: 'ingest',
              ViewerProtocolPolicy: 'https-only',
              AllowedMethods: ['GET', 'HEAD', 'OPTIONS', 'PUT', 'POST', 'PATCH', 'DELETE'],
              CachedMethods: ['GET', 'HEAD'],
              CachePolicyId: CACHING_DISABLED,
              OriginRequestPolicyId: { Ref: 'IngestOriginRequestPolicy' },
              Compress: true,
            },
          },
        },
      },
      // CloudFront's metrics are published in us-east-1, where this stack is.
      Api5xxAlarm: alarm('CloudFront answered 5XX to more than 1 % of requests (ingest or the origin failed)', 'AWS/CloudFront', '5xxErrorRate', [{ Name: 'DistributionId', Value: { Ref: 'IngestDistribution' } }, { Name: 'Region', Value: 'Global' }], 'Average', 1),
    },
    Outputs: {
      ApiUrl: { Value: { 'Fn::Join': ['', ['https://', { 'Fn::GetAtt': ['IngestDistribution', 'DomainName'] }]] } },
    },
  };
}

// The resources of the chosen door, merged into `resources:` by osls.
async function resources(ctx) {
  return (await door(ctx)) === 'cloudfront' ? cloudfrontResources(ctx) : restResources(ctx);
}

module.exports = { door, ingestEventSource, wafScope, resources };
