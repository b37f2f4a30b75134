'use strict';
// Stage-wide throttling of the REST API, written into the CloudFormation template.
//
// The framework applies stage settings (logs, tracing) through SDK calls after the
// deployment, and has no setting for throttling; this plugin puts
// `StageDescription.ThrottlingRateLimit/BurstLimit` and a `*/*` method setting on the
// generated AWS::ApiGateway::Deployment, so the limits are part of the reviewed and
// tested template. Values: custom.apiRateLimit and custom.apiBurstLimit.
class StageThrottling {
  constructor(serverless) {
    this.serverless = serverless;
    this.hooks = { 'before:package:finalize': () => this.apply() };
  }

  apply() {
    const custom = this.serverless.service.custom || {};
    // The cloudfront front door has no API Gateway stage (WAF's rate rule and ingest's
    // reserved concurrency bound it).
    if (custom.frontDoor === 'cloudfront') return;
    const rate = Number(custom.apiRateLimit);
    const burst = Number(custom.apiBurstLimit);
    if (!Number.isFinite(rate) || !Number.isFinite(burst) || rate <= 0 || burst <= 0) {
      throw new Error('custom.apiRateLimit and custom.apiBurstLimit must be positive numbers');
    }
    const resources =
      this.serverless.service.provider.compiledCloudFormationTemplate.Resources;
    let found = 0;
    for (const resource of Object.values(resources)) {
      if (resource.Type !== 'AWS::ApiGateway::Deployment') continue;
      found += 1;
      resource.Properties.StageDescription = Object.assign(
        {},
        resource.Properties.StageDescription,
        {
          ThrottlingRateLimit: rate,
          ThrottlingBurstLimit: burst,
          MethodSettings: [
            { HttpMethod: '*', ResourcePath: '/*', ThrottlingRateLimit: rate, ThrottlingBurstLimit: burst },
          ],
        }
      );
    }
    if (found === 0) {
      throw new Error('stage-throttling: no API Gateway deployment in the template');
    }
  }
}

module.exports = StageThrottling;
